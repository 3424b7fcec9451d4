"""The GPU plan can be captured as CUDA graphs: checked everywhere, against CuPy's capture rules.

GPU machines are rare here, and a host copy or a matmul slipped into MPPI's iterations would quietly
turn every control step on the robot back into fifty Python launches (one warning, then slow). So
the plan runs on tests/fake_cupy, NumPy arrays that raise where CuPy raises during stream capture
(a host-to-device or device-to-host copy, a cuBLAS call), in a process of its own so that a real
CuPy is never shadowed. It checks what gets captured and replayed, not numbers: those come from the
GPU tests (test_cupy_backend.py) on a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from onboard.profile import ROOT
from onboard.tasks import ANALYTIC_TASKS

FAKE_CUPY = ROOT / "tests" / "fake_cupy"
N_ITERS, STEPS = 2, 4

SCRIPT = r"""
import json, logging, sys
import numpy as np
import cupy
from onboard.backends import cupy_backend
from onboard.backends.numpy_backend import NumpyBackend
from onboard.mppi import MPPI, MPPIConfig
from onboard.qfunction import OnnxQ
from onboard.tasks import get_task

def rollout(self, states, actions, params, gamma):  # the CUDA kernel's stand-in, on "device" arrays
    host = [np.asarray(a, dtype=np.float64) for a in (states, actions, params)]
    cost, last = NumpyBackend(self.task).rollout(*host, gamma)
    return cost.astype(np.float32).view(cupy.ndarray), last.astype(np.float32).view(cupy.ndarray)

cupy_backend.CupyBackend.rollout = rollout
warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger("mpq").addHandler(handler)
task_name, q_path, q_kind, n_iters, steps, warm_up = sys.argv[1:]
task = get_task(task_name)
mppi = MPPI(task, MPPIConfig.for_task(task, K=32, H=8, n_iters=int(n_iters)), "cupy",
            q=OnnxQ(q_path, task) if "onnx" in q_kind else None)
if q_kind == "host":  # a Q that reads its input on the host: that cannot be in a graph
    mppi.q = lambda obs, act: cupy.asarray(obs.get()[:, 0])
if q_kind.startswith("gpu-onnx"):  # as if ONNX Runtime ran on the GPU (here it has only its CPU provider)
    q = mppi.q
    q.session, q.out_rank = "a GPU session", 1
    def bound_run(obs, act, out, session=None):
        if q_kind == "gpu-onnx-uncapturable":  # a provider whose run copies to the host: no capture takes it
            return lambda: out.set(np.asarray(q.host_q(obs.get(), act.get()), dtype=np.float32))
        return lambda: out.__setitem__(Ellipsis, obs[:, 0])  # device work only: a capture takes it
    q.bound_run = bound_run
warmed = {}
if warm_up == "1":  # as the control loop starts an episode
    mppi.warm_up(task.hanging_state()[None])
    warmed = dict(captured_before_acting=mppi.backend.replays_graphs, launches_before_acting=len(cupy.cuda.LAUNCHES))
for _ in range(int(steps)):
    mppi.act(task.hanging_state())
captured = list(mppi.backend.captured.values())
print(json.dumps(dict(
    **warmed,
    captured=[c is not None for c in captured],
    inline=[c.inline for c in captured if c is not None],
    steps=[len(c.steps) for c in captured if c is not None],
    launches=len(cupy.cuda.LAUNCHES),
    warnings=[w for w in warnings if "CUDA graph" in w],
)))
"""


def plan_on_fake_cupy(task_name: str, q_kind: str, q_path="", warm_up=False) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, task_name, str(q_path), q_kind, str(N_ITERS), str(STEPS), str(int(warm_up))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKE_CUPY), str(ROOT)])},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("q_kind", ["gpu-onnx", "onnx", "none"])
@pytest.mark.parametrize("task_name", ANALYTIC_TASKS)
def test_the_plan_is_captured_once_and_replayed_after_its_first_run(task_name, q_kind, make_q):
    q_path = make_q(task_name)[0] if "onnx" in q_kind else ""
    result = plan_on_fake_cupy(task_name, q_kind, q_path)
    assert result["captured"] == [True] and result["inline"] == [True] and result["warnings"] == []
    # ONNX Runtime on the GPU, or no Q: one graph. The Q on the CPU (ONNX Runtime without its CUDA
    # provider): a graph before, between and after its runs.
    graphs = N_ITERS + 1 if q_kind == "onnx" else 1
    assert result["steps"] == [2 * N_ITERS + 1 if q_kind == "onnx" else 1]
    assert result["launches"] == graphs * (STEPS - 1)  # the first step runs kernel by kernel


def test_an_onnx_runtime_run_that_cannot_be_captured_runs_between_graphs(make_q):
    """A provider whose run the capture refuses costs one warning, and the plan is still graphs."""
    result = plan_on_fake_cupy("pendulum", "gpu-onnx-uncapturable", make_q("pendulum")[0])
    assert result["captured"] == [True] and result["inline"] == [False]
    assert result["steps"] == [2 * N_ITERS + 1] and result["launches"] == (N_ITERS + 1) * (STEPS - 1)
    assert len(result["warnings"]) == 1 and "captured again with the run between graphs" in result["warnings"][0]


def test_a_plan_that_breaks_the_capture_rules_is_announced_and_not_captured():
    """The check can fail: a Q that copies its input to the host is refused by the capture."""
    result = plan_on_fake_cupy("pendulum", "host")
    assert result["captured"] == [False] and result["launches"] == 0
    assert len(result["warnings"]) == 1 and "device-to-host copy" in result["warnings"][0]


def test_warming_up_captures_the_plan_so_that_every_control_step_replays_it(make_q):
    """The control loop warms up before arming: the capture must not land in a control step."""
    result = plan_on_fake_cupy("pendulum", "gpu-onnx", make_q("pendulum")[0], warm_up=True)
    assert result["captured_before_acting"]
    assert result["launches_before_acting"] == 1  # the capture's replay
    assert result["launches"] == 1 + STEPS  # and one replay per control step after it
