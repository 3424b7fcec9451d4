"""Ctrl-C and SIGTERM around the robot's plant: a stop the loop takes at its next step, and the stretches where a
Ctrl-C must not cut short what keeps the plant safe (its disarm) or what stops other processes (a pull's rsync)."""

from __future__ import annotations

import contextlib
import signal
import threading


def stop_on_signals():
    """Ctrl-C and SIGTERM set a flag the loop checks every step (the episode ends, the plant is disarmed, the
    segment closed); a second Ctrl-C interrupts at once. Returns the flag's reader."""
    flag = {"stop": False}

    def handler(signum, frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return lambda: flag["stop"]


@contextlib.contextmanager
def ctrl_c_ignored():
    """Ctrl-C ignored for a bounded stretch that must finish (the plant's disarm, stopping a transfer): a Ctrl-C
    there would leave the plant armed or the transfer running. Only the main thread can set handlers, and only it
    receives Ctrl-C, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield  # elsewhere no Ctrl-C arrives; a handler not set from Python could not be put back
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
