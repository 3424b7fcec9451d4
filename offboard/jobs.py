"""A long run's independent pieces (a learner's training seed, one planner's evaluation) as jobs.

They run in `workers` processes at once (the standard library's process pool: each job is a whole onboard loop
with its stand-in, or a trainer, so processes, not threads), and each result is written to <run>/jobs/ the moment
it is done: a run that was stopped continues where it stopped (`python -m offboard.demo --resume <run>`), the
finished jobs read back, an unfinished one run again, going on from what it kept (offboard.demo: a learner from
its last whole round, an evaluation from its episodes but the last; every episode is seeded by its id). With one
worker the jobs run in this process, one after another, in the order they were submitted.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import re
import signal
from pathlib import Path

from onboard.signals import stop_signals


class Stop:
    """One Ctrl-C, SIGTERM or SIGHUP (onboard.signals.stop_signals) stops the whole run. While episodes run, the
    loop sees it at its next step, ends its segment cleanly and disarms, and the run stops after it; elsewhere
    (training, export) it interrupts at once. `shared`: an event every worker process of the run watches too (the
    run's own stop sets it)."""

    def __init__(self, shared=None):
        self.requested = False
        self.in_episodes = False
        self.shared = shared

    def __call__(self) -> bool:
        return self.requested or (self.shared is not None and self.shared.is_set())

    def handler(self, signum, frame) -> None:
        first = not self.requested
        self.requested = True
        if self.shared is not None:
            self.shared.set()
        if not (first and self.in_episodes):
            raise KeyboardInterrupt


_worker_stop: Stop | None = None  # a worker process's own Stop, watching the run's shared event


def _start_worker(shared) -> None:
    global _worker_stop
    _worker_stop = Stop(shared)
    for signum in stop_signals():
        signal.signal(signum, _worker_stop.handler)


def _call(fn, args: tuple):
    return fn(*args, stop=_worker_stop)


class Jobs:
    def __init__(self, run_dir: Path, workers: int, stop: Stop):
        self.folder = Path(run_dir) / "jobs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stop = stop
        self.pool = None
        if workers > 1:
            # spawn, not fork: a forked copy of a process that already ran torch's or MuJoCo's threads can hang
            context = multiprocessing.get_context("spawn")
            stop.shared = context.Event()
            self.pool = cf.ProcessPoolExecutor(
                workers, mp_context=context, initializer=_start_worker, initargs=(stop.shared,)
            )

    def path(self, name: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9._=-]", "_", name) + ".json")

    def submit(self, name: str, fn, *args) -> cf.Future:
        """fn(*args, stop=...) -> a JSON-able result, once per run: a result kept from before is returned as it
        was. A job stopped before runs again and goes on from what it kept in its own folder."""
        kept, future = self.path(name), cf.Future()
        if kept.exists():
            future.set_result(json.loads(kept.read_text()))
            return future
        if self.pool is None:  # here and now: an interruption goes straight up, as without jobs
            future.set_result(self._keep(kept, fn(*args, stop=self.stop)))
            return future
        running = self.pool.submit(_call, fn, args)
        running.add_done_callback(lambda done: self._keep_done(kept, done))
        return running

    def _keep_done(self, path: Path, done: cf.Future) -> None:
        """A worker's job that finished, kept (one cancelled by a stop, or failed, leaves nothing here)."""
        if not done.cancelled() and done.exception() is None:
            self._keep(path, done.result())

    @staticmethod
    def _keep(path: Path, result):
        """The result on disk, whole or not at all (a file written aside, then renamed over)."""
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(partial, path)
        return result

    def __enter__(self) -> Jobs:
        return self

    def __exit__(self, kind, error, trace) -> None:
        """Wait for the workers. After a stop or a failed job, every worker ends its episode at its next step (or
        its training round) and nothing waiting starts."""
        if self.pool is None:
            return
        if kind is not None:
            self.stop.shared.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
