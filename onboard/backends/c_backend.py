"""The fast CPU backend: each task's C dynamics and the generic rollout, built by the system C compiler.

Why C and not numba: the task's per-sample C source is the one the GPU backend compiles for CUDA as
well, so CPU, GPU and NumPy share one definition per task that the tests hold together. The library
is built on first use into a cache keyed by the source, the compiler and the machine
(`MPQ_CACHE_DIR`, default ~/.cache/mpq) and called through cffi (a third of ctypes' per-call cost,
which matters at the paper's K=24, H=8); a robot builds it once, at deploy time or on first run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

import cffi
import numpy as np

from firmware_bridge.paths import build_once, cache_dir
from onboard.backends import check_rollout_shapes
from onboard.tasks.base import C_PRELUDE, Task

ROLLOUT_SOURCE = Path(__file__).with_name("rollout.c")
CFLAGS = ["-O3", "-fPIC", "-shared", "-std=c99"]
FFI = cffi.FFI()
FFI.cdef(
    "void mpq_rollout(long n_rollouts, long K, long H, const double *states, const double *actions,"
    " const double *params, int params_per_rollout, double gamma, double *cost_out, double *last_state_out);"
)


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


@functools.cache
def compiler_identity(compiler: str) -> str:
    """The compiler's version line and the machine, so a cache shared across machines never mixes them."""
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    except FileNotFoundError:
        raise RuntimeError(
            f"no C compiler {compiler!r} for the 'c' backend: install one (apt-get install gcc) or use --backend numpy"
        ) from None
    return f"{compiler} {version} {platform.machine()} {' '.join(CFLAGS)}"


def build_library(source: str, stem: str) -> Path:
    """Compile `source` to a shared library once; later calls return the cached file."""
    compiler = os.environ.get("CC", "cc")
    digest = hashlib.sha256((source + compiler_identity(compiler)).encode()).hexdigest()[:16]
    library = cache_dir() / f"{stem}-{digest}.so"
    try:
        return build_once(library, lambda out: _compile(compiler, source, out))
    except OSError as e:
        raise RuntimeError(
            f"cannot build the 'c' backend in {library.parent} ({e.strerror}): set MPQ_CACHE_DIR to a writable folder"
        ) from None


def _compile(compiler: str, source: str, out: Path) -> None:
    src = out.with_suffix(".c")
    src.write_text(source)
    result = subprocess.run([compiler, *CFLAGS, "-o", str(out), str(src), "-lm"], capture_output=True, text=True)
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["(no output)"])[0]
        raise RuntimeError(f"compiling the 'c' backend ({out.stem}) failed: {first}")


class CBackend:
    name = "c"
    xp = np

    def __init__(self, task: Task):
        self.task = task
        library = build_library(task_c_program(task), f"mpq-{task.name}")
        try:
            self._lib = FFI.dlopen(str(library))
        except OSError as e:
            raise RuntimeError(f"cannot load {library} ({e}): delete it and let mpq build it again") from None

    def rollout(self, states, actions, params, gamma):
        """states (B, n), actions (B, K, H, m), params (B, K, P) or (P,) -> cost (B, K), last state (B, K, n)."""
        check_rollout_shapes(self.task, states, actions, params)
        B, K, H, _ = actions.shape
        states = np.ascontiguousarray(states, dtype=np.float64)
        actions = np.ascontiguousarray(actions, dtype=np.float64)
        params = np.ascontiguousarray(params, dtype=np.float64)
        cost = np.empty((B, K))
        last = np.empty((B, K, self.task.state_dim))
        buffer = FFI.from_buffer
        self._lib.mpq_rollout(
            B * K, K, H, buffer("double[]", states), buffer("double[]", actions), buffer("double[]", params),
            params.ndim > 1, gamma, buffer("double[]", cost), buffer("double[]", last),
        )  # fmt: skip
        return cost, last
