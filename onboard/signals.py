"""Ctrl-C, SIGTERM and SIGHUP around the robot's plant: a stop the loop takes at its next step, and the stretches
where a Ctrl-C must not cut short what keeps the plant safe (its disarm) or what stops other processes (a pull's
rsync). SIGHUP (the terminal or ssh session closed) is taken only where it is not ignored: under `nohup` a run goes
on."""

from __future__ import annotations

import contextlib
import signal
import threading


def stop_signals() -> list[signal.Signals]:
    """The signals that stop a run: Ctrl-C, SIGTERM, and SIGHUP unless the run was started to ignore it."""
    hangup = [signal.SIGHUP] if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN else []
    return [signal.SIGINT, signal.SIGTERM, *hangup]


def stop_on_signals():
    """Ctrl-C, SIGTERM and SIGHUP set a flag the loop checks every step (the episode ends, the plant is disarmed,
    the segment closed); a second Ctrl-C interrupts at once. Returns the flag's reader."""
    flag = {"stop": False}

    def handler(signum, frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    for sig in stop_signals():
        signal.signal(sig, handler)
    return lambda: flag["stop"]


@contextlib.contextmanager
def terminate_as_ctrl_c():
    """SIGTERM and SIGHUP (a `kill`, a closed terminal or ssh session) taken as a Ctrl-C for a command that starts
    processes of their own session (a pull's rsync, which no signal to this process reaches): the command stops them
    as it does on Ctrl-C, where the default action would end this process and leave them running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in stop_signals() if sig != signal.SIGINT}
    try:
        yield
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


@contextlib.contextmanager
def ctrl_c_ignored():
    """Ctrl-C ignored for a bounded stretch that must finish (the plant's disarm, stopping a transfer): a Ctrl-C
    there would leave the plant armed or the transfer running. So are SIGTERM and SIGHUP where a handler of this
    program takes them (as a stop, or as a Ctrl-C); where they end the process by default, they still do. Only the
    main thread can set handlers, and only it receives signals, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = [sig for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if callable(signal.getsignal(sig))]
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in handled}  # a handler not set from Python: left
    try:
        yield
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)
