"""The cupy backend on a GPU: the NumPy reference on identical noise, a plan replayed as a CUDA graph
against the same plan kernel by kernel, ORT CUDA with IO binding against CPU ORT, and a whole lockstep
episode against the stand-in. Skipped, with the reason, where there is no GPU; without CuPy, asking
for the backend is one clear error."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from offboard.onnx_mlp import random_mlp
from onboard.backends import get_backend
from onboard.loop import run
from onboard.mppi import MPPI, MPPIConfig
from onboard.profile import ROOT, load_profile
from onboard.qfunction import OnnxQ
from onboard.recorder import verified_segments
from onboard.tasks import ANALYTIC_TASKS, get_task
from tests.conftest import NumpyQ
from tests.gpu import GPU_MISSING, needs_gpu

FLOAT32 = dict(rtol=1e-4, atol=1e-4)


def q_tolerance(provider: str) -> dict:
    """ORT's CUDA provider runs with TF32 off and the announced CPU fallback in float32, as the CPU does;
    TensorRT uses TF32 on Ampere and newer."""
    return dict(rtol=2e-3, atol=2e-3) if provider == "TensorrtExecutionProvider" else FLOAT32


def ort_cuda_missing() -> str | None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return None
    return "this ONNX Runtime has no CUDA provider (onnxruntime-gpu is not installed): the Q's CPU fallback is used"


class FixedDraws:
    """The planner's generator replaced by given draws, on whichever array module the backend uses."""

    def __init__(self, xp, normals, uniforms=None):
        self.xp, self.normals, self.uniforms = xp, normals, uniforms

    def standard_normal(self, shape, dtype=np.float64):
        assert shape == self.normals.shape
        return self.xp.array(self.normals, dtype=dtype)  # a copy: MPPI scales the draws in place

    def random(self, shape, dtype=np.float64):
        assert shape == self.uniforms.shape
        return self.xp.array(self.uniforms, dtype=dtype)


@pytest.mark.skipif(GPU_MISSING is None, reason="CuPy and a GPU are here: the backend loads")
def test_without_cupy_or_a_gpu_the_backend_is_one_clear_error():
    with pytest.raises(RuntimeError, match="backend 'cupy'") as error:
        get_backend("cupy", get_task("pendulum"))
    assert "use backend 'c'" in str(error.value)
    out = subprocess.run(
        [sys.executable, "-m", "onboard", "plan", "--backend", "cupy"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode != 0 and out.stderr.count("\n") == 1 and "backend 'cupy'" in out.stderr


@needs_gpu
@pytest.mark.parametrize("name", ANALYTIC_TASKS)
@pytest.mark.parametrize("with_q", [False, True])
def test_a_plan_on_identical_noise_equals_numpy(name, with_q, make_q):
    import cupy

    task = get_task(name)
    config = MPPIConfig.for_task(task, K=512, H=16, n_iters=2, seed=3)
    B, shape = 2, (2, 512, 16, task.act_dim)
    rng = np.random.default_rng(5)
    normals = rng.standard_normal((config.n_iters, *shape))
    uniforms = rng.random((config.n_iters, B, config.K, task.param_dim))
    states = np.stack([task.initial_state(rng) for _ in range(B)])
    q_path = make_q(name, hidden=(64, 64))[0] if with_q else None
    plans = {}
    for backend, xp in (("numpy", np), ("cupy", cupy)):
        q = OnnxQ(q_path, task) if with_q else None
        mppi = MPPI(task, config, backend, q=q)
        draws = [FixedDraws(xp, normals[i], uniforms[i]) for i in range(config.n_iters)]
        mppi.noise_rng = _Sequence(draws, "standard_normal")
        mppi.param_rng = _Sequence(draws, "random")
        plans[backend] = mppi.plan(states)
    ref, gpu = plans["numpy"], plans["cupy"]
    assert isinstance(gpu.actions, np.ndarray)  # the plan came back to the host
    tolerance = q_tolerance(mppi.q.provider) if with_q else FLOAT32
    np.testing.assert_allclose(gpu.actions, ref.actions, **tolerance)
    np.testing.assert_allclose(gpu.value, ref.value, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gpu.ess, ref.ess, rtol=1e-3)


class _Sequence:
    """Hands out each iteration's draws in turn."""

    def __init__(self, draws, method):
        self.draws, self.method, self.i = draws, method, 0

    def __getattr__(self, name):
        def draw(shape, dtype=np.float64):
            value = getattr(self.draws[self.i], self.method)(shape, dtype)
            self.i += 1
            return value

        return draw


def act_six_steps(task, config, q_path, graphs: bool, uncapturable_q: bool = False):
    """Six closed-loop actions from one start, and what the backend captured."""
    mppi = MPPI(task, config, "cupy", q=OnnxQ(q_path, task))
    mppi.backend.graphs = graphs
    if uncapturable_q:  # a provider whose run waits for its stream, as some do: no capture takes it
        bound_run, stream = mppi.q.bound_run, mppi.backend.stream

        def waiting_run(*args, **kwargs):
            run = bound_run(*args, **kwargs)
            return lambda: (stream.synchronize(), run())

        mppi.q.bound_run = waiting_run
    true_params = task.planner_params("true", (), None)
    state, actions = task.initial_state(np.random.default_rng(1)), []
    for _ in range(6):
        actions.append(mppi.act(state))
        state = task.step(state, actions[-1], true_params)
    return np.array(actions), list(mppi.backend.captured.values()), mppi.q.provider


@needs_gpu
@pytest.mark.parametrize("name", ANALYTIC_TASKS)
def test_control_steps_replayed_as_cuda_graphs_equal_kernel_by_kernel(name, make_q):
    """Same seed, same states: the replayed graph draws fresh noise and runs the Q each step, as the
    eager run does. With ONNX Runtime on the GPU a control step is one graph launch; with the Q's CPU
    fallback (no onnxruntime-gpu), a graph before, between and after its runs."""
    from onboard.backends.cupy_backend import CapturedCall

    task = get_task(name)
    q_path = make_q(name, hidden=(64, 64))[0]
    config = MPPIConfig.for_task(task, K=256, H=16, n_iters=2, model="biased", seed=4)
    replayed, captured, provider = act_six_steps(task, config, q_path, graphs=True)
    eager, not_captured, _ = act_six_steps(task, config, q_path, graphs=False)
    assert len(captured) == 1 and isinstance(captured[0], CapturedCall)  # captured, not fallen back
    assert captured[0].inline
    assert len(captured[0].steps) == (1 if provider != "CPUExecutionProvider" else 2 * config.n_iters + 1)
    assert not_captured == []
    assert np.ptp(replayed) > 0  # the actions move: each replay drew new noise
    np.testing.assert_allclose(replayed, eager, **q_tolerance(provider))


@needs_gpu
def test_an_onnx_runtime_run_that_cannot_be_captured_runs_between_graphs_with_a_warning(make_q, caplog):
    if ort_cuda_missing():
        pytest.skip(ort_cuda_missing())
    task = get_task("pendulum")
    q_path = make_q("pendulum", hidden=(64, 64))[0]
    config = MPPIConfig.for_task(task, K=256, H=16, n_iters=2, model="biased", seed=4)
    with caplog.at_level(logging.WARNING, logger="mpq.backends.cupy"):
        replayed, captured, provider = act_six_steps(task, config, q_path, graphs=True, uncapturable_q=True)
    eager = act_six_steps(task, config, q_path, graphs=False)[0]
    assert len(captured) == 1 and captured[0] is not None and not captured[0].inline
    assert len(captured[0].steps) == 2 * config.n_iters + 1  # a graph before, between and after the Q's runs
    warnings = [r.getMessage() for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(warnings) == 1 and "captured again with the run between graphs" in warnings[0]
    np.testing.assert_allclose(replayed, eager, **q_tolerance(provider))


@needs_gpu
def test_a_plan_that_cannot_be_captured_runs_kernel_by_kernel_with_a_warning(caplog):
    """A Q that reads its input on the host (a sync) cannot be in a CUDA graph: announced, and it still plans."""
    import cupy

    task = get_task("pendulum")
    q = NumpyQ(random_mlp(np.random.default_rng(0), task.obs_dim + task.act_dim, (8,)))
    mppi = MPPI(task, MPPIConfig.for_task(task), "cupy", q=lambda o, a: cupy.asarray(q(o.get(), a.get())))
    with caplog.at_level(logging.WARNING, logger="mpq.backends.cupy"):
        actions = [mppi.act(task.hanging_state()) for _ in range(3)]
    assert list(mppi.backend.captured.values()) == [None]
    assert sum("not as a CUDA graph" in r.getMessage() for r in caplog.records) == 1
    assert np.all(np.isfinite(actions))


@needs_gpu
def test_ort_cuda_with_io_binding_equals_cpu_ort(make_q):
    import cupy

    if ort_cuda_missing():
        pytest.skip(ort_cuda_missing())

    from onboard.backends.device_q import DeviceOnnxQ

    task = get_task("cartpole")
    host = OnnxQ(make_q("cartpole", hidden=(256, 256))[0], task)
    stream = cupy.cuda.Stream()
    with stream:
        device = DeviceOnnxQ(host, stream)
        assert device.provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
        rng = np.random.default_rng(0)
        obs, act = rng.standard_normal((4096, task.obs_dim)), rng.uniform(-10, 10, (4096, task.act_dim))
        on_gpu = device(cupy.asarray(obs, dtype=cupy.float32), cupy.asarray(act, dtype=cupy.float32))
        assert isinstance(on_gpu, cupy.ndarray)
        np.testing.assert_allclose(on_gpu.get(), host(obs, act), **q_tolerance(device.provider))
    with pytest.raises(ValueError, match="stream of its own"):
        DeviceOnnxQ(host, cupy.cuda.Stream.null)


@needs_gpu
def test_a_lockstep_episode_against_the_standin_with_backend_cupy(tmp_path, make_q):
    q_path = make_q("pendulum")[0]
    profile = load_profile("sim", backend="cupy", log_dir=str(tmp_path), model=str(q_path))
    stats = run(profile, 1, show_status=False)
    assert stats.episodes == 1 and stats.steps == get_task("pendulum").episode_steps
    good, problems = verified_segments(tmp_path / "sim")
    assert len(good) == 1 and problems == []


@needs_gpu
def test_a_python_q_still_works_on_the_gpu():
    """The trainer's Q is any callable on the backend's arrays; MPPI hands it CuPy arrays."""
    task = get_task("pendulum")
    q = NumpyQ(random_mlp(np.random.default_rng(0), task.obs_dim + task.act_dim, (8,)))
    import cupy

    mppi = MPPI(task, MPPIConfig.for_task(task), "cupy", q=lambda o, a: cupy.asarray(q(o.get(), a.get())))
    assert np.all(np.isfinite(mppi.act(task.hanging_state())))
