"""Where and how urgently the control loop's thread runs: the profile's CPUs and, in realtime, SCHED_FIFO.

A realtime loop plans at SCHED_FIFO priority so that no ordinary process can delay a plan (as ros2_control's
controller manager does); where the system refuses, it says so once and runs at normal priority.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager

from onboard.errors import LoopError
from onboard.profile import RobotProfile

log = logging.getLogger("mpq.loop")


def realtime_priority(profile: RobotProfile) -> int:
    """The SCHED_FIFO priority the loop asks for: the profile's realtime_priority in realtime mode; 0 (normal
    scheduling) in lockstep, where the plant waits for every command."""
    return profile.realtime_priority if profile.mode == "realtime" else 0


@contextmanager
def loop_scheduling(profile: RobotProfile):
    """The profile's CPUs (`cpus`) and, in realtime, SCHED_FIFO at its realtime_priority for this thread while
    the loop runs; yields what it got. Threads it starts afterwards (ONNX Runtime's, MuJoCo's rollout pool)
    inherit both; processes it starts (the stand-in) begin at normal priority (SCHED_RESET_ON_FORK)."""
    with loop_cpus(profile.cpus), loop_priority(realtime_priority(profile)) as scheduling:
        yield scheduling + (f" on cpus {', '.join(map(str, profile.cpus))}" if profile.cpus else "")


@contextmanager
def loop_cpus(cpus: list[int]):
    """Pin this thread (and the threads it starts) to `cpus` while the loop runs (nothing when empty)."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:
        have = ", ".join(map(str, sorted(before)))
        raise LoopError(f"cannot pin the loop to cpus = {cpus} ({e.strerror}): it may run on {have}") from None
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextmanager
def loop_priority(priority: int):
    """SCHED_FIFO at `priority` for this thread (0: normal scheduling); yields what it got."""
    if priority == 0:
        yield "normal"
        return
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError as e:
        log.warning(realtime_refused(priority, e))
        yield "normal (SCHED_FIFO refused)"
        return
    try:
        yield f"SCHED_FIFO {priority}"
    finally:
        try:
            os.sched_setscheduler(0, *before)
        except OSError:  # without CAP_SYS_NICE the reset-on-fork flag, once set, stays
            os.sched_setscheduler(0, before[0] | os.SCHED_RESET_ON_FORK, before[1])


def realtime_refused(priority: int, error: OSError) -> str:
    return (
        f"the control loop cannot run at realtime priority {priority} (SCHED_FIFO: {error.strerror}); it runs at "
        "normal priority, where other processes can delay its plans: allow it (run as root, grant CAP_SYS_NICE, "
        "or set an rtprio limit in /etc/security/limits.d), or set realtime_priority = 0 in the profile"
    )


def realtime_refusal(priority: int) -> OSError | None:
    """The system's refusal to run a thread of this process at SCHED_FIFO `priority`; None where it may.
    Tried on a short-lived thread, so the caller's own scheduling is never touched."""
    refusal = []

    def attempt():
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except OSError as e:
            refusal.append(e)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join()
    return refusal[0] if refusal else None
