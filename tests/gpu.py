"""Which backends the tests can run here: the cupy backend only where CuPy sees a CUDA device."""

from __future__ import annotations

import pytest


def gpu_missing() -> str | None:
    """Why the GPU tests cannot run here, or None when they can."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (make setup GPU=1): the cupy backend is verified on a GPU machine"
    try:
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return None
    except Exception as e:  # CuPy's CUDA errors when there is no driver
        return f"no CUDA device ({type(e).__name__}): the cupy backend is verified on a GPU machine"
    return "no CUDA device: the cupy backend is verified on a GPU machine"


GPU_MISSING = gpu_missing()
needs_gpu = pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")
CPU_BACKENDS = ("numpy", "c", "mujoco")
ALL_BACKENDS = (*CPU_BACKENDS, pytest.param("cupy", marks=needs_gpu))


def warp_missing() -> str | None:
    """Why the warp backend's tests cannot run here (MuJoCo Warp not installed), or None."""
    import importlib.util

    if importlib.util.find_spec("mujoco_warp") is None or importlib.util.find_spec("warp") is None:
        return "MuJoCo Warp is not installed (the warp extra; make setup installs it)"
    return None


needs_warp = pytest.mark.skipif(warp_missing() is not None, reason=warp_missing() or "")
