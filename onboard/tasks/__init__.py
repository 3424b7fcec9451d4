"""The task registry. A new task is its module here, its models/<name>/<name>.xml, and one line below."""

from __future__ import annotations

from onboard.tasks.base import Task
from onboard.tasks.cartpole import CartPole
from onboard.tasks.pendulum import Pendulum

TASKS: dict[str, type[Task]] = {
    "pendulum": Pendulum,
    "cartpole": CartPole,
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]()
    except KeyError:
        raise ValueError(f"unknown task {name!r}: known tasks are {', '.join(sorted(TASKS))}") from None
