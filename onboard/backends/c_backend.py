"""The fast CPU backend: each task's C dynamics and the generic rollout, built by the system C compiler.

Why C and not numba: the task's per-sample C source is the one the GPU backend compiles for CUDA as
well, so CPU, GPU and NumPy share one definition per task that the tests hold together. The library
is built on first use into a cache keyed by the source, the compiler and the machine
(`MPQ_CACHE_DIR`, default ~/.cache/mpq) and called through cffi (a third of ctypes' per-call cost,
which matters at the paper's K=24, H=8); a robot builds it once, at deploy time or on first run.

Flags: -O3, and -march=native where the compiler takes it: the library is built on the machine that runs
it, so it may use every instruction that CPU has. The cache key holds what the compiler resolved `native`
to (GCC's target and every feature flag; otherwise the CPU's model and features), so a cache folder shared
between two machines never hands one the other's build. -ffp-contract=off: no fused multiply-adds, so the
results stay those of the NumPy reference whatever the target and compiler.
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
from onboard.backends import CpuBackend, check_rollout_shapes
from onboard.backends.source import task_program
from onboard.tasks.base import Task

CFLAGS = ["-O3", "-fPIC", "-shared", "-std=c99", "-ffp-contract=off"]
NATIVE = "-march=native"
ROLLOUT_SIGNATURE = (
    "void mpq_rollout(long n_rollouts, long K, long H, const {r} *states, const {r} *actions,"
    " const {r} *params, int params_per_rollout, {r} gamma, {r} *cost_out, {r} *last_state_out);"
)
FFIS = {}
for _real in ("double", "float"):
    FFIS[_real] = cffi.FFI()
    FFIS[_real].cdef(ROLLOUT_SIGNATURE.format(r=_real))


@functools.cache
def compiler_flags(compiler: str) -> tuple[list[str], str]:
    """The flags for this machine, and what identifies the build: the compiler's version, the machine and,
    with -march=native, what the compiler takes `native` to mean (GCC prints its target and each feature it
    turns on or off; other compilers: the CPU's model and feature flags from /proc/cpuinfo)."""
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    except FileNotFoundError:
        raise RuntimeError(
            f"no C compiler {compiler!r} for the 'c' backend: install one (apt-get install gcc) or use --backend numpy"
        ) from None
    flags, target = list(CFLAGS), ""
    probe = subprocess.run([compiler, NATIVE, "-Q", "--help=target"], capture_output=True, text=True)
    if probe.returncode == 0 or _accepts(compiler, NATIVE):
        flags.append(NATIVE)
        named = [line.split()[-1] for line in probe.stdout.splitlines() if line.strip().startswith("-march=")]
        if probe.returncode == 0 and named and named[0] != "native":  # GCC: the target and all its -m flags
            target = f"{named[0]}-{hashlib.sha256(probe.stdout.encode()).hexdigest()[:12]}"
        else:
            target = _cpu_fingerprint()
    return flags, f"{compiler} {version} {platform.machine()} {target} {' '.join(flags)}"


def _accepts(compiler: str, flag: str) -> bool:
    """Whether the compiler builds an empty program with the flag."""
    result = subprocess.run(
        [compiler, flag, "-x", "c", "-c", "-o", os.devnull, "-"], input="", capture_output=True, text=True
    )
    return result.returncode == 0


def _cpu_fingerprint() -> str:
    """The CPU's model and feature flags (Linux), hashed: two machines with different instructions differ."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown-cpu"
    keys = ("model name", "flags", "Features", "CPU part", "CPU implementer")
    wanted = sorted({line for line in lines if line.split(":")[0].strip() in keys})
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:12]


def build_library(source: str, stem: str) -> Path:
    """Compile `source` to a shared library once; later calls return the cached file."""
    compiler = os.environ.get("CC", "cc")
    flags, identity = compiler_flags(compiler)
    digest = hashlib.sha256((source + identity).encode()).hexdigest()[:16]
    library = cache_dir() / f"{stem}-{digest}.so"
    try:
        return build_once(library, lambda out: _compile(compiler, flags, source, out))
    except OSError as e:
        raise RuntimeError(
            f"cannot build the 'c' backend in {library.parent} ({e.strerror}): set MPQ_CACHE_DIR to a writable folder"
        ) from None


def _compile(compiler: str, flags: list[str], source: str, out: Path) -> None:
    src = out.with_suffix(".c")
    src.write_text(source)
    result = subprocess.run([compiler, *flags, "-o", str(out), str(src), "-lm"], capture_output=True, text=True)
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["(no output)"])[0]
        raise RuntimeError(f"compiling the 'c' backend ({out.stem}) failed: {first}")


class CBackend(CpuBackend):
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
            B * K,
            K,
            H,
            buffer(kind, states),
            buffer(kind, actions),
            buffer(kind, params),
            params.ndim > 1,
            gamma,
            buffer(kind, cost),
            buffer(kind, last),
        )
        return cost, last
