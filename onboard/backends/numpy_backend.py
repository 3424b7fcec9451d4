"""The float64 reference: the task's NumPy dynamics, vectorised over B x K, one Python loop over H."""

from __future__ import annotations

import numpy as np

from onboard.backends import CpuBackend, check_rollout_shapes
from onboard.tasks.base import Task


class NumpyBackend(CpuBackend):
    name = "numpy"

    def __init__(self, task: Task):
        self.task = task

    def rollout(self, states, actions, params, gamma):
        """states (B, n), actions (B, K, H, m), params (B, K, P) or (P,) -> cost (B, K), last state (B, K, n)."""
        check_rollout_shapes(self.task, states, actions, params)
        B, K, H, _ = actions.shape
        s = np.broadcast_to(states[:, None, :], (B, K, states.shape[-1]))
        cost = np.zeros((B, K))
        discount = 1.0
        for t in range(H - 1):
            a = actions[:, :, t]
            cost += discount * self.task.cost(s, a)
            s = self.task.step(s, a, params)
            discount *= gamma
        return cost, np.array(s)
