"""Array backends for MPPI rollouts, selected by name.

A backend rolls B x K action sequences of length H through a task's planner model and returns the
discounted running cost of steps 0..H-2 and the state reached at step H-1 (where the terminal value
takes over). Everything else in MPPI is shared code on the backend's array module `xp`.

mujoco (CPU) and warp (MuJoCo Warp; GPU, or the CPU for tests) step the task's MJCF and serve every
task; numpy (the float64 reference), c and cupy run a task's optional closed-form model, faster.
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np

from onboard.tasks.base import Task

BACKEND_NAMES = ("numpy", "c", "cupy", "mujoco", "warp")
ANALYTIC_BACKENDS = ("numpy", "c", "cupy")  # these run a task's closed-form model: only tasks that have one


class CpuBackend:
    """What the CPU backends share: NumPy arrays and NumPy's generator in host memory, float64."""

    xp = np
    dtype = np.float64

    @functools.cached_property
    def memory_bytes(self) -> int:
        """The machine's physical memory: what a plan's arrays must fit in."""
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    @staticmethod
    def rng(seed: np.random.SeedSequence):
        return np.random.default_rng(seed)

    @staticmethod
    def to_host(*arrays):
        """The arrays as NumPy arrays: here they already are."""
        return arrays

    @staticmethod
    def run_as_graph(fn, inputs, host_outputs, uses=()):
        """fn(*inputs) -> outputs: the first host_outputs of them on the host, and all of them as computed.

        `uses` names what else fn reads (the GPU backend captures fn as a CUDA graph per input shape)."""
        outputs = fn(*inputs)
        return outputs[:host_outputs], outputs

    @staticmethod
    def device_q(q):
        """The Q where this backend's arrays live: on the CPU, the Q as given."""
        return q

    @staticmethod
    def scope():
        """Where the backend's work runs (a CUDA stream on the GPU); nothing to enter on the CPU."""
        return contextlib.nullcontext()


def check_rollout_shapes(task: Task, states, actions, params) -> None:
    """Refuse arrays a rollout would misread: (B, n) states, (B, K, H, m) actions, (P,) or (B, K, P) params."""
    B, K = actions.shape[:2] if actions.ndim == 4 else (None, None)
    problems = []
    if actions.ndim != 4 or actions.shape[3] != task.act_dim:
        problems.append(f"actions {actions.shape} are not (B, K, H, {task.act_dim})")
    if states.shape != (B, task.state_dim):
        problems.append(f"states {states.shape} are not (B={B}, {task.state_dim})")
    if params.shape not in ((task.param_dim,), (B, K, task.param_dim)):
        problems.append(f"params {params.shape} are neither ({task.param_dim},) nor (B, K, {task.param_dim})")
    if problems:
        raise ValueError(f"{task.name} rollout: " + "; ".join(problems))


def cpu_backend_for(task: Task) -> str:
    """The CPU backend a task plans with by default: the compiled closed form where it has one, else MuJoCo."""
    return "c" if task.has_analytic_model else "mujoco"


def get_backend(name: str, task: Task, threads: int | None = None):
    """The backend `name` for the task; `threads`: the CPU threads a MuJoCo backend steps with (None: all)."""
    if name in ANALYTIC_BACKENDS and not task.has_analytic_model:
        raise ValueError(
            f"task {task.name!r} has no analytic model for backend {name!r}: use backend mujoco, which steps its MJCF"
            " (on a robot with a GPU, onboard's warp does too)"
        )
    if name == "mujoco":
        from onboard.backends.mujoco_backend import MujocoBackend

        return MujocoBackend(task, threads)
    if name == "warp":
        from onboard.backends.warp_backend import WarpBackend

        return WarpBackend(task)
    if name == "numpy":
        from onboard.backends.numpy_backend import NumpyBackend

        return NumpyBackend(task)
    if name == "c":
        from onboard.backends.c_backend import CBackend

        return CBackend(task)
    if name == "cupy":
        from onboard.backends.cupy_backend import CupyBackend

        return CupyBackend(task)
    raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
