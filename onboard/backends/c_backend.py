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
from onboard.backends import HostArrays, check_rollout_shapes
from onboard.backends.source import task_program
from onboard.tasks.base import Task

CFLAGS = ["-O3", "-fPIC", "-shared", "-std=c99"]
ROLLOUT_SIGNATURE = (
    "void mpq_rollout(long n_rollouts, long K, long H, const {r} *states, const {r} *actions,"
    " const {r} *params, int params_per_rollout, {r} gamma, {r} *cost_out, {r} *last_state_out);"
)
FFIS = {}
for _real in ("double", "float"):
    FFIS[_real] = cffi.FFI()
    FFIS[_real].cdef(ROLLOUT_SIGNATURE.format(r=_real))


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


class CBackend(HostArrays):
    """real="double" is the backend; real="float" builds the same source as the GPU runs it (tests)."""

    name = "c"

    def __init__(self, task: Task, real: str = "double"):
        self.task = task
        self.array_kind = f"{real}[]"  # what cffi's from_buffer views the arrays as
        self.dtype = np.float64 if real == "double" else np.float32
        self._ffi = FFIS[real]
        library = build_library(task_program(task, real), f"mpq-{task.name}-{real}")
        try:
            self._lib = self._ffi.dlopen(str(library))
        except OSError as e:
            raise RuntimeError(f"cannot load {library} ({e}): delete it and let mpq build it again") from None

    def rollout(self, states, actions, params, gamma):
        """states (B, n), actions (B, K, H, m), params (B, K, P) or (P,) -> cost (B, K), last state (B, K, n)."""
        check_rollout_shapes(self.task, states, actions, params)
        B, K, H, _ = actions.shape
        states = np.ascontiguousarray(states, dtype=self.dtype)
        actions = np.ascontiguousarray(actions, dtype=self.dtype)
        params = np.ascontiguousarray(params, dtype=self.dtype)
        cost = np.empty((B, K), dtype=self.dtype)
        last = np.empty((B, K, self.task.state_dim), dtype=self.dtype)
        buffer, kind = self._ffi.from_buffer, self.array_kind
        self._lib.mpq_rollout(
            B * K, K, H, buffer(kind, states), buffer(kind, actions), buffer(kind, params),
            params.ndim > 1, gamma, buffer(kind, cost), buffer(kind, last),
        )  # fmt: skip
        return cost, last
