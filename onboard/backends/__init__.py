"""Array backends for MPPI rollouts, selected by name.

A backend rolls B x K action sequences of length H through a task's planner model and returns the
discounted running cost of steps 0..H-2 and the state reached at step H-1 (where the terminal value
takes over). Everything else in MPPI is shared code on the backend's array module `xp`.
"""

from __future__ import annotations

from onboard.tasks.base import Task

BACKEND_NAMES = ("numpy", "c")


def get_backend(name: str, task: Task):
    if name == "numpy":
        from onboard.backends.numpy_backend import NumpyBackend

        return NumpyBackend(task)
    if name == "c":
        from onboard.backends.c_backend import CBackend

        return CBackend(task)
    raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
