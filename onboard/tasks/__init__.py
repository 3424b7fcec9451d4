"""The task registry. A new task is its module here, its models/<name>/<name>.xml, and one line below."""

from __future__ import annotations

from onboard.tasks.ball_in_cup import BallInCup
from onboard.tasks.base import Task
from onboard.tasks.cartpole import CartPole
from onboard.tasks.pendulum import Pendulum

TASKS: dict[str, type[Task]] = {"pendulum": Pendulum, "cartpole": CartPole, "ball_in_cup": BallInCup}

# The tasks with a closed-form fast path (`step` and `c_source`: the numpy, c and cupy backends); the others
# plan with the MuJoCo backends only.
ANALYTIC_TASKS: tuple[str, ...] = tuple(sorted(name for name, task in TASKS.items() if task.c_source is not None))


def get_task(name: str, mass_scale: dict[str, float] | None = None) -> Task:
    """The task `name`; mass_scale: its plant's bodies off the MJCF's masses (Task.__init__)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: known tasks are {', '.join(sorted(TASKS))}")
    task = TASKS[name]
    if getattr(task, "name", None) != name:  # the name finds models/<name>/<name>.xml and labels every log
        raise ValueError(
            f"TASKS[{name!r}] is {task.__name__}, whose name is {getattr(task, 'name', None)!r}: give the class "
            f"name = {name!r}, or register it under its own name"
        )
    made = task(mass_scale)
    made.check_shapes()
    return made
