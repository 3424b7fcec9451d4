"""The fast CPU backend: each task's C dynamics and the generic rollout, built by the system C compiler.

Why C and not numba: the task's per-sample C source is the one the GPU backend compiles for CUDA as
well, so CPU, GPU and NumPy share one definition per task that the tests hold together. The library
is built on first use into a cache keyed by the source's hash (`MPQ_CACHE_DIR`, default
~/.cache/mpq) and loaded with ctypes; a robot builds it once, at deploy time or on first run.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from onboard.tasks.base import C_PRELUDE, Task

ROLLOUT_SOURCE = Path(__file__).with_name("rollout.c")
CFLAGS = ["-O3", "-fPIC", "-shared", "-std=c99"]


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mpq"
    return Path(os.environ.get("MPQ_CACHE_DIR", default))


def task_c_program(task: Task) -> str:
    """The whole C translation unit for one task: prelude, the task's functions, the rollout."""
    return "\n".join(
        [
            "#define REAL double",
            C_PRELUDE,
            task.c_source,
            f"#define STATE_DIM {task.state_dim}",
            f"#define ACT_DIM {task.act_dim}",
            f"#define PARAM_DIM {task.param_dim}",
            f"#define TASK_STEP {task.name}_step",
            f"#define TASK_COST {task.name}_cost",
            ROLLOUT_SOURCE.read_text(),
        ]
    )


def build_library(source: str, stem: str) -> Path:
    """Compile `source` to a shared library once; later calls return the cached file."""
    compiler = os.environ.get("CC", "cc")
    digest = hashlib.sha256((source + compiler + " ".join(CFLAGS)).encode()).hexdigest()[:16]
    out_dir = cache_dir()
    library = out_dir / f"{stem}-{digest}.so"
    if library.exists():
        return library
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        src = Path(tmp) / f"{stem}.c"
        src.write_text(source)
        built = Path(tmp) / library.name
        try:
            result = subprocess.run(
                [compiler, *CFLAGS, "-o", str(built), str(src), "-lm"], capture_output=True, text=True
            )
        except FileNotFoundError:
            raise RuntimeError(
                f"no C compiler {compiler!r} for the 'c' backend: install one (apt-get install gcc) "
                "or use --backend numpy"
            ) from None
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["(no output)"])[0]
            raise RuntimeError(f"compiling the 'c' backend for {stem} failed: {first}")
        os.replace(built, library)  # atomic: a concurrent builder sees the whole file or none
    return library


class CBackend:
    name = "c"
    xp = np

    def __init__(self, task: Task):
        self.task = task
        lib = ctypes.CDLL(str(build_library(task_c_program(task), f"mpq-{task.name}")))
        self._rollout = lib.mpq_rollout
        self._rollout.restype = None
        self._rollout.argtypes = (
            [ctypes.c_long] * 3 + [ctypes.c_void_p] * 3 + [ctypes.c_int, ctypes.c_double] + [ctypes.c_void_p] * 2
        )

    def rollout(self, states, actions, params, gamma):
        """states (B, n), actions (B, K, H, m), params (B, K, P) or (P,) -> cost (B, K), last state (B, K, n)."""
        B, K, H, _ = actions.shape
        states = np.ascontiguousarray(states, dtype=np.float64)
        actions = np.ascontiguousarray(actions, dtype=np.float64)
        params = np.ascontiguousarray(params, dtype=np.float64)
        cost = np.empty((B, K))
        last = np.empty((B, K, self.task.state_dim))
        self._rollout(
            B * K, K, H, states.ctypes.data, actions.ctypes.data, params.ctypes.data, params.ndim > 1, gamma,
            cost.ctypes.data, last.ctypes.data,
        )  # fmt: skip
        return cost, last
