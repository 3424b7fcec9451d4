"""The GPU backend's one source per task, checked on machines without a GPU.

The float32 CPU build of the same translation unit the GPU runs must match the NumPy reference (and on a
GPU, the CUDA kernel itself), and
the CUDA program (task + rollout.c + rollout_kernel.cu) must compile with NVRTC (the dev extra installs
it on Linux) or nvcc, whichever is here.
"""

from __future__ import annotations

import ctypes
import glob
import shutil
import subprocess

import numpy as np
import pytest

from onboard.backends import get_backend
from onboard.backends.c_backend import CBackend
from onboard.backends.numpy_backend import NumpyBackend
from onboard.backends.source import KERNEL_NAME, task_program
from onboard.tasks import ANALYTIC_TASKS, get_task
from tests.gpu import needs_gpu

ARCH = "compute_87"  # Jetson Orin; PTX for it also runs on newer GPUs (H100 is sm_90)


def float32_rollout(build: str, task):
    """The device source's rollout in float32: built for this CPU, or the CUDA kernel on the GPU."""
    if build == "cpu":
        return CBackend(task, real="float").rollout
    import cupy

    kernel = get_backend("cupy", task).rollout

    def on_gpu(states, actions, params, gamma):
        cost, last = kernel(cupy.asarray(states), cupy.asarray(actions), cupy.asarray(params), gamma)
        return cost.get(), last.get()

    return on_gpu


@pytest.mark.parametrize("build", ["cpu", pytest.param("cuda", marks=needs_gpu)])
@pytest.mark.parametrize("task_name", ANALYTIC_TASKS)
def test_the_float32_device_source_matches_numpy(task_name, build):
    task = get_task(task_name)
    rollout = float32_rollout(build, task)
    rng = np.random.default_rng(7)
    B, K, H = 3, 512, 32
    states = np.stack([task.initial_state(rng) for _ in range(B)])
    actions = rng.uniform(task.u_min, task.u_max, (B, K, H, task.act_dim))
    for params in (task.planner_params("biased", (B, K), rng), task.planner_params("true", (B, K), rng)):
        cost64, last64 = NumpyBackend(task).rollout(states, actions, params, 0.9)
        cost32, last32 = rollout(states, actions, params, 0.9)
        assert cost32.dtype == np.float32
        np.testing.assert_allclose(cost32, cost64, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(last32, last64, rtol=1e-4, atol=1e-4)


def _nvrtc_library():
    """NVRTC from the dev extra (nvidia/cuda_nvrtc, CUDA 12), CUDA 13's wheels (nvidia/cu13), or the system."""
    candidates = []
    try:
        import nvidia
    except ImportError:
        pass
    else:
        for folder in nvidia.__path__:
            candidates += sorted(glob.glob(f"{folder}/cuda_nvrtc/lib/libnvrtc.so*"))
            candidates += sorted(glob.glob(f"{folder}/cu*/lib/libnvrtc.so*"))
    candidates += ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    for candidate in candidates:
        if "builtins" in candidate or "alt" in candidate:
            continue
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    return None


def compile_with_nvrtc(nvrtc, source: str, name: str) -> tuple[int, str, bytes]:
    """(result code, log, PTX) of NVRTC compiling `source` for ARCH; no GPU needed."""
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None) == 0
    options = [f"--gpu-architecture={ARCH}".encode()]  # NVRTC's default dialect, as CuPy compiles it
    code = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    ptx = b""
    if code == 0:
        nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
        buffer = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetPTX(program, buffer)
        ptx = buffer.value
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return code, log.value.decode(errors="replace"), ptx


@pytest.mark.parametrize("task_name", ANALYTIC_TASKS)
def test_the_cuda_source_compiles(task_name, tmp_path):
    source = task_program(get_task(task_name), "float", device=True)
    nvrtc = _nvrtc_library()
    if nvrtc is not None:
        code, log, ptx = compile_with_nvrtc(nvrtc, source, f"{task_name}.cu")
        assert code == 0, log
        assert f".entry {KERNEL_NAME}".encode() in ptx
        return
    if shutil.which("nvcc") is None:
        pytest.skip("no CUDA compiler here (neither NVRTC from the dev extra nor nvcc)")
    cu = tmp_path / f"{task_name}.cu"
    cu.write_text(source)
    out = subprocess.run(
        ["nvcc", f"--gpu-architecture={ARCH}", "-ptx", str(cu), "-o", str(tmp_path / "k.ptx")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert KERNEL_NAME in (tmp_path / "k.ptx").read_text()


def test_a_broken_cuda_source_is_caught():
    """The compile check can fail: a typo in the device source is reported with NVRTC's log."""
    nvrtc = _nvrtc_library()
    if nvrtc is None:
        pytest.skip("NVRTC is not installed (the dev extra installs it on Linux)")
    source = task_program(get_task("pendulum"), "float", device=True).replace(
        "cost_out[r] = cost;", "cost_out[r] = cst;"
    )
    code, log, _ = compile_with_nvrtc(nvrtc, source, "broken.cu")
    assert code != 0 and "cst" in log
