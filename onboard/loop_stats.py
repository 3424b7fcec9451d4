"""What a run of the control loop measured: steps, plan times, deadline misses, the loop's rate and memory."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firmware_bridge.link import Link

STATS_WINDOW = 200_000  # steps kept for the run's percentiles: a service that runs for days stays bounded


@dataclass
class LoopStats:
    steps: int = 0
    episodes: int = 0
    deadline_misses: int = 0
    plan_ms: deque = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    send_times: deque = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))  # loop rate and jitter
    seconds: float = 0.0  # time in episodes (resets excluded)
    period: float = 0.0
    scheduling: str = "normal"  # the loop's scheduling while it ran ("SCHED_FIFO 50" in realtime)
    stopped: bool = False  # ended early by Ctrl-C, SIGTERM or SIGHUP (onboard.signals)

    def summary(self) -> dict:
        """The numbers of a run (benchmarks read them): rate, plan times, misses, period jitter, memory."""
        ms = np.array(self.plan_ms) if self.plan_ms else np.zeros(1)
        gaps = np.diff(self.send_times) if len(self.send_times) > 1 else np.zeros(1)
        gaps = gaps[gaps < 5 * self.period] if self.period else gaps  # drop the pauses between episodes
        jitter = np.abs(gaps - self.period) * 1e3 if gaps.size else np.zeros(1)
        return dict(
            episodes=self.episodes,
            steps=self.steps,
            steps_per_second=self.steps / self.seconds if self.seconds else 0.0,
            plan_ms_p50=float(np.percentile(ms, 50)),
            plan_ms_p99=float(np.percentile(ms, 99)),
            deadline_misses=self.deadline_misses,
            period_ms=self.period * 1e3,
            period_jitter_ms_p99=float(np.percentile(jitter, 99)),
            scheduling=self.scheduling,
            stopped=self.stopped,
            peak_rss_mb=peak_rss_mb(),
        )

    def line(self, episode: int, step: int, episode_cost: float, link: Link) -> str:
        """The operator's status line: rate, plan times and misses over the last steps, link errors, cost."""
        ms = np.array(list(itertools.islice(reversed(self.plan_ms), 1000))) if self.plan_ms else np.zeros(1)
        times = list(itertools.islice(reversed(self.send_times), 200))[::-1]
        hz = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        c = link.parser.counters
        return (
            f"episode {episode} step {step:4d} | {hz:7.1f} Hz | plan p50 {np.percentile(ms, 50):6.2f} ms "
            f"p99 {np.percentile(ms, 99):6.2f} ms | misses {self.deadline_misses} | link errors "
            f"{c.crc_errors + c.signature_errors} gaps {c.seq_gaps} | cost {episode_cost:9.2f}"
        )


def peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec,
    so a process started from a big parent (a workstation with torch loaded) would report the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
