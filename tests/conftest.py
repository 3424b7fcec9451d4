"""Shared test helpers: small Q models built here, with onnx.helper, never downloaded."""

from __future__ import annotations

import signal

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


def terminal_signals() -> None:
    """A child's preexec_fn: Ctrl-C and a hangup as a terminal delivers them (a job started with & in a script
    inherits SIGINT ignored, one under nohup SIGHUP), so a test can send them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class NumpyQ:
    """The MLP evaluated directly in float64: a deterministic Q for comparing backends."""

    def __init__(self, layers):
        self.layers = layers

    def __call__(self, obs, act):
        return mlp_forward(self.layers, obs, act)


def long_first(items: list, is_long, workers: int) -> list:
    """items reordered so that each worker's first share (worksteal's split: n // w items to the first, the rest
    likewise among the others) starts with its turn of the long ones; every item once, the rest in their order."""
    shares, left = [], len(items)
    for i in range(workers):
        shares.append(left // (workers - i))
        left -= shares[-1]
    heads = [[] for _ in shares]
    turn = 0
    for item in (item for item in items if is_long(item)):
        while len(heads[turn % workers]) == shares[turn % workers]:  # that share is all long ones already
            turn += 1
        heads[turn % workers].append(item)
        turn += 1
    short = iter([item for item in items if not is_long(item)])
    ordered = []
    for share, head in zip(shares, heads, strict=True):
        ordered += head + [next(short) for _ in range(share - len(head))]
    return ordered


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` have deselected: the list xdist splits
def pytest_collection_modifyitems(config, items):
    """In each xdist worker, the tests marked `long` first, dealt in turn to the workers' shares. Worksteal (make
    test's --dist) hands each worker a contiguous share of the collection, then moves the tails of the longest
    queues to idle workers: starting each share with its long tests leaves short ones for the end, so the workers
    finish together (on 2 cores a long test started last kept one worker busy for up to a minute after the other was
    done). Other --dist modes only see another order (a worker is not told the mode); --lf, --ff and --nf reorder
    after this."""
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    if workers > 1:
        items[:] = long_first(items, lambda item: item.get_closest_marker("long") is not None, workers)
