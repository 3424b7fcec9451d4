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


@pytest.hookimpl(trylast=True)  # after `-m` has deselected: the list xdist splits
def pytest_collection_modifyitems(config, items):
    """The whole runs (marked `long`) first, dealt in turn to the xdist workers' shares. Worksteal hands each worker
    a contiguous share of the collection, then moves the tails of the longest queues to idle workers: starting each
    share with its long tests leaves short ones for the end, so the workers finish together (on 2 cores a long
    test started last kept one worker busy for up to a minute after the other was done)."""
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    long = [item for item in items if item.get_closest_marker("long")]
    if workers < 2 or not long:
        return
    short = iter([item for item in items if not item.get_closest_marker("long")])
    ordered, left = [], len(items)
    for i in range(workers):  # xdist's first split: n // w to the first worker, the rest likewise among the others
        share = left // (workers - i)
        heads = long[i::workers]
        ordered += heads + [next(short) for _ in range(max(0, share - len(heads)))]
        left -= share
    items[:] = ordered + list(short)
