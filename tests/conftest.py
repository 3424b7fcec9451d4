"""Shared test helpers: small Q models built here, with onnx.helper, never downloaded."""

from __future__ import annotations

import numpy as np
import pytest

from offboard.onnx_mlp import mlp_forward, mlp_onnx, random_mlp
from onboard.qfunction import save_q_model
from onboard.tasks import get_task


@pytest.fixture
def make_q(tmp_path):
    """make_q(task_name, hidden=(16, 16), seed=0, **save_kwargs) -> (onnx path, layers)."""

    def build(task_name="pendulum", hidden=(16, 16), seed=0, layers=None, **save_kwargs):
        task = get_task(task_name)
        if layers is None:
            layers = random_mlp(np.random.default_rng(seed), task.obs_dim + task.act_dim, hidden)
        path = tmp_path / f"{task_name}-{seed}" / "q.onnx"
        save_q_model(mlp_onnx(layers, task.obs_dim, task.act_dim), path, task, {"name": "tests"}, **save_kwargs)
        return path, layers

    return build


class NumpyQ:
    """The MLP evaluated directly in float64: a deterministic Q for comparing backends."""

    def __init__(self, layers):
        self.layers = layers

    def __call__(self, obs, act):
        return mlp_forward(self.layers, obs, act)
