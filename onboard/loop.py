"""The control loop on the robot: receive state -> obs -> MPPI (+ ONNX Q) -> send command -> record.

lockstep runs as fast as the plant answers. realtime follows the plant's clock: the plant streams a
state every control period, and a plan that takes longer than the period is not used: the next action
of the previous (shifted) plan goes out instead, the miss is counted and recorded, and after
`deadline_misses_max` misses in a row the loop commands the safe action, disarms and stops.
In realtime the loop runs at SCHED_FIFO priority (`realtime_priority`) so that other processes
cannot delay a plan; where the system refuses, it says so once and runs at normal priority.
Ctrl-C or SIGTERM ends the current segment cleanly and disarms the plant.
"""

from __future__ import annotations

import errno
import gc
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firmware_bridge.dialect import mavlink
from firmware_bridge.link import Link, LinkError
from firmware_bridge.plant import plant_draw
from onboard.mppi import MPPI, MPPIConfig
from onboard.profile import RobotProfile
from onboard.qfunction import OnnxQ
from onboard.recorder import Recorder
from onboard.tasks import get_task

log = logging.getLogger("mpq.loop")

STATE_TIMEOUT = 2.0  # s without a state from the plant: the link is dead
STATE_LATE = 1.1  # realtime: periods after which the next state counts as lost (the plan's next action goes out)
WATCHDOG = mavlink.MPQ_FAILSAFE_WATCHDOG
# What a Q's values depend on: the MPPI it was trained with.
TRAINED_SETTINGS = ("K", "H", "n_iters", "sigma", "lam", "alpha", "gamma", "td_lambda", "noise_filter")
STATS_WINDOW = 200_000  # steps kept for the run's percentiles: a service that runs for days stays bounded


class LoopError(RuntimeError):
    """The loop stopped for a reason the operator must act on; the message says which."""


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=Path(__file__).parent
        )
        if out.returncode == 0:
            return out.stdout.strip()
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mpq")
    except PackageNotFoundError:
        return "unknown"


class PlantPort:
    """The serial port of the profile: a device/URL as given, or a stand-in started (and stopped) here."""

    def __init__(self, profile: RobotProfile):
        self.profile = profile
        self.process = None
        self.url = profile.serial

    def __enter__(self) -> str:
        p = self.profile
        if p.serial != "standin":
            return self.url
        models = get_task(p.task).xml_path.parents[1]  # the stand-in runs the very MJCF the task plans with
        args = [sys.executable, "-m", "firmware_bridge.standin", "--task", p.task, "--mode", p.mode]
        args += ["--models", str(models)]
        if p.signing_key_file:
            args += ["--signing-key-file", str(p.path(p.signing_key_file))]
        if p.standin_period:
            args += ["--control-period", str(p.standin_period)]
        for body, factor in p.standin_mass_scale.items():
            args += ["--mass-scale", f"{body}={factor!r}"]
        if p.standin_randomise:  # each episode's plant drawn from the task's bias, by (seed, episode)
            for address, low, high in get_task(p.task).bias_ranges:
                args += ["--randomise", f"{address}={low!r}:{high!r}"]
            args += ["--randomise-seed", str(p.seed)]
        log_dir = p.log_path / p.name
        log_dir.mkdir(parents=True, exist_ok=True)
        log_file = log_dir / "standin.log"
        with open(log_file, "a") as log:
            self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            said = (log_file.read_text(errors="replace").strip().splitlines() or ["(nothing)"])[-1]
            raise LoopError(f"the stand-in for {p.task!r} did not start (exit {code}): {said} (log: {log_file})")
        self.url = json.loads(line)["port"]
        return self.url

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()


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
            peak_rss_mb=peak_rss_mb(),
        )

    def line(self, episode: int, step: int, episode_cost: float, link: Link) -> str:
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


def make_planner(profile: RobotProfile, task):
    q = OnnxQ(profile.model_path, task, threads=profile.threads) if profile.model else None
    config = MPPIConfig.for_task(task, **profile.mppi)
    if q is not None and (mismatch := trained_settings_mismatch(q, config)):
        log.warning(mismatch)
    return MPPI(task, config, profile.backend, q=q, threads=profile.threads)


def trained_settings_mismatch(q: OnnxQ, config: MPPIConfig) -> str | None:
    """A Q's values are the free energy of the MPPI it was trained with (q.json's "mppi"); planning with
    other settings gives the terminal value a meaning it was not trained for. One line, or None."""
    trained = q.manifest.get("mppi")
    if not isinstance(trained, dict):  # a model from elsewhere may not record them
        return None
    acting = config.to_dict()

    def same(a, b) -> bool:
        try:
            return bool(np.allclose(np.asarray(a, float), np.asarray(b, float)))
        except (TypeError, ValueError):  # not numbers, or shapes that do not broadcast
            return False

    def fits(key) -> bool:
        """More iterations than trained optimise the same objective further (the ball-in-cup's Q is trained with
        one and acts with three); fewer leave K rollouts weighted mostly by their model draws."""
        if key == "n_iters" and isinstance(trained[key], int) and isinstance(acting[key], int):
            return acting[key] >= trained[key]
        return same(acting[key], trained[key])

    differ = [
        f"{key}={acting[key]!r} (trained with {trained[key]!r})"
        for key in TRAINED_SETTINGS
        if key in trained and not fits(key)
    ]
    if not differ:
        return None
    return (
        f"{q.path} was trained for other MPPI settings than this profile plans with: {', '.join(differ)}; "
        "set them in the profile's [mppi] or retrain"
    )


@contextmanager
def loop_scheduling(profile: RobotProfile):
    """The profile's CPUs (`cpus`) and, in realtime, SCHED_FIFO at its realtime_priority for this thread while
    the loop runs; yields what it got. Threads it starts afterwards (ONNX Runtime's, MuJoCo's rollout pool)
    inherit both; processes it starts (the stand-in) begin at normal priority (SCHED_RESET_ON_FORK)."""
    with loop_cpus(profile.cpus), loop_priority(profile) as scheduling:
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
def loop_priority(profile: RobotProfile):
    """SCHED_FIFO at the profile's realtime_priority for this thread in realtime; yields what it got."""
    priority = profile.fifo_priority
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


def run(profile: RobotProfile, episodes: int, planner=None, show_status: bool = True, stop=None) -> LoopStats:
    """Run `episodes` episodes (0: until stopped) against the profile's plant, one verified segment each."""
    with loop_scheduling(profile) as scheduling:  # before the planner: ONNX Runtime's threads inherit it
        task = get_task(profile.task, profile.standin_mass_scale)
        planner = planner or make_planner(profile, task)
        try:
            recorder = Recorder(profile.log_path, profile.name)
        except OSError as e:
            raise LoopError(
                f"cannot keep segments in {profile.log_path / profile.name} ({e.strerror}): set another log_dir"
            ) from None
        try:
            stats = LoopStats(scheduling=scheduling)
            return _run(profile, task, episodes, planner, recorder, show_status, stop, stats)
        finally:
            recorder.close()  # the folder's lock: another run may record into it now


def _run(
    profile: RobotProfile, task, episodes: int, planner, recorder: Recorder, show_status: bool, stop, stats: LoopStats
) -> LoopStats:
    signing_key = profile.signing_key()  # before the plant starts: a bad key is the profile's error, not the plant's
    stop = stop or _stop_on_signals()
    status_due = 0.0
    version = code_version()  # a git call: once per run, not per episode
    live = show_status and sys.stderr.isatty()  # the \r line only on a terminal; logs get one line per episode
    with PlantPort(profile) as url:
        link = Link(url, task.name, task.state_dim, task.act_dim, baud=profile.baud, signing_key=signing_key)
        try:
            link.handshake(control_period=task.dt)
            period = stats.period = link.plant_handshake.control_period_us / 1e6 or task.dt
            for _ in range(episodes) if episodes else itertools.count():
                if stop():
                    break
                episode = recorder.next_episode
                rng = np.random.default_rng([profile.seed, episode])
                start = task.hanging_state() if profile.starts == "hanging" else task.initial_state(rng)
                state = link.reset(episode, state=start)
                planner.warm_up(state.state[None])  # before the watchdog runs: no control step pays for it
                planner.reset()
                recorder.start_episode(episode, _segment_metadata(profile, task, planner, episode, version))
                # A full garbage collection now, while disarmed (the last episode's objects included), and what
                # lives then (modules, the planner, the link) moved out of the collector's sight: a collection
                # in a control step walks only what this episode made (over 50k startup objects took 12 ms,
                # past a 200 Hz loop's watchdog).
                gc.unfreeze()
                gc.collect()
                gc.freeze()
                link.arm()
                if profile.mode == "realtime":  # the plant kept streaming while we armed: start from now
                    state = _newest(link, state)
                episode_started = time.monotonic()
                episode_cost, interrupted = 0.0, False
                misses_in_a_row, held_steps, unarmed_steps, rearms = 0, 0, 0, 0
                for t in range(task.episode_steps):
                    if stop():
                        interrupted = True
                        break
                    obs = task.obs(state.state)
                    started = time.perf_counter()
                    plan = planner.propose(state.state)
                    compute = time.perf_counter() - started
                    missed = profile.mode == "realtime" and compute > period
                    if missed:  # too late for this state: the previous plan's next action goes out
                        stats.deadline_misses += 1
                        misses_in_a_row += 1
                        u = planner.skip()
                    else:
                        misses_in_a_row = 0
                        u = planner.commit(plan)
                    next_state = _exchange(link, u, state, profile, period, planner)
                    stats.send_times.append(link.last_sent)
                    failsafe = next_state.failsafe  # every state carries it: the host learns of one at once
                    if failsafe == WATCHDOG and profile.rearm_after_watchdog:
                        link.rearm()  # meanwhile the plant held zero actuation: the states say so (armed 0)
                        next_state = _newest(link, next_state)  # the re-arm took periods: plan from now on
                        rearms += 1
                    elif failsafe:
                        why = (
                            f"the plant latched failsafe {_failsafe_name(failsafe)} at step {t}: its actuators are "
                            "off; find the cause (the loop's timing, the commands), then re-arm"
                        )
                        _safe_stop(link, next_state, recorder, stats, episode_cost, "plant failsafe", why)
                        raise LoopError(why)
                    # What the plant did over this period, from the state's command_seq: our command, an older
                    # one it held (ours came too late or was lost), or nothing (disarmed). Training reads it.
                    applied = link.applied(next_state)
                    held = next_state.command_seq != link.command_seq
                    held_steps += held
                    unarmed_steps += not next_state.armed
                    action = np.asarray(u if applied is None else applied, dtype=np.float64)
                    cost = float(task.cost(state.state, action))
                    episode_cost += cost
                    done = t == task.episode_steps - 1
                    recorder.write(
                        "/transition",
                        dict(
                            t=t, state=state.state.tolist(), obs=obs.tolist(), action=action.tolist(),
                            commanded=np.asarray(u).tolist(), applied_seq=next_state.command_seq, held=held,
                            armed=next_state.armed, cost=cost,
                            next_state=next_state.state.tolist(), done=done,
                        ),
                    )  # fmt: skip
                    recorder.write(
                        "/mppi",
                        dict(t=t, compute_ms=compute * 1e3, ess=float(plan.ess[0]), value=float(plan.value[0]),
                             deadline_missed=missed),
                    )  # fmt: skip
                    rtt = link.rtts[-1] * 1e6 if link.rtts else None
                    recorder.write("/link", dict(t=t, rtt_us=rtt, **link.counters(), plant=link.plant_counters()))
                    recorder.flush()
                    stats.steps += 1
                    stats.plan_ms.append(compute * 1e3)
                    state = next_state
                    if misses_in_a_row >= profile.deadline_misses_max:
                        why = (
                            f"stopped: {misses_in_a_row} planning deadlines missed in a row (last plan "
                            f"{compute * 1e3:.1f} ms, period {period * 1e3:.1f} ms): lower K or H, use a faster "
                            "backend, or run in lockstep"
                        )
                        _safe_stop(link, state, recorder, stats, episode_cost, "deadline misses", why)
                        raise LoopError(why)
                    if live and time.monotonic() >= status_due:
                        status_due = time.monotonic() + 0.25
                        print("\r" + stats.line(episode, t, episode_cost, link), end="", file=sys.stderr, flush=True)
                stats.seconds += time.monotonic() - episode_started
                link.disarm()
                recorder.end_episode(
                    dict(cost=episode_cost, steps=t + 1, interrupted=interrupted, held_steps=held_steps,
                         unarmed_steps=unarmed_steps, rearms=rearms, link=link.counters(),
                         plant=link.plant_counters())
                )  # fmt: skip
                stats.episodes += 1
                if show_status:
                    print(
                        ("\r" if live else "") + stats.line(episode, t, episode_cost, link), file=sys.stderr, flush=True
                    )
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):  # the log folder, not the link
                raise LoopError(
                    f"cannot write the log in {recorder.dir} ({e.strerror}): the plant is disarmed; "
                    "free space there (pull-data --prune) or set another log_dir"
                ) from None
            raise
        finally:
            try:  # zero actuation first: nothing the recorder raises may keep the plant armed
                link.disarm(timeout=0.5)
            except LinkError:
                pass
            try:
                if recorder.in_episode:  # an error mid-episode: keep what was recorded, as a complete segment
                    failure = sys.exc_info()[1]  # the error on its way out: its line goes into the segment
                    recorder.end_episode(
                        dict(interrupted=True, error=str(failure) or type(failure).__name__, link=link.counters(),
                             plant=link.plant_counters())
                    )  # fmt: skip
            except OSError as e:  # the disk that failed mid-episode: the error above says so; the .partial stays
                log.warning("could not close the segment (%s): the next start recovers its .partial", e.strerror)
            finally:
                link.close()
    return stats


def _exchange(link: Link, u, state, profile: RobotProfile, period: float, planner):
    """Send u answering `state`; the plant's next state (the planner draws its next noise while it waits).
    Lockstep sends u again until its state comes back.
    Realtime sends profile.command_copies copies, and while no state comes (lost on the wire) it keeps the
    plant fed each period with the plan's next action (as after a missed deadline), so that a few lost
    states in a row never trip its watchdog; while the states that come are rejected (non-finite), with
    the safe action (zero) instead."""
    if profile.mode == "lockstep":
        next_state = link.exchange(u, state.seq, STATE_TIMEOUT, meanwhile=planner.draw_ahead)
    else:
        link.send_command(u, state.seq, profile.command_copies)
        planner.draw_ahead()  # the next plan's noise, while the plant steps
        give_up, rejected = time.monotonic() + STATE_TIMEOUT, link.counts["states_rejected"]
        next_state = link.recv_state(STATE_LATE * period)
        while next_state is None and time.monotonic() < give_up:
            link.counts["states_late"] += 1
            broken = link.counts["states_rejected"] > rejected  # the plant reports garbage: hold still
            fallback = np.zeros(link.act_dim) if broken else planner.skip()
            link.send_command(fallback, state.seq, profile.command_copies)
            next_state = link.recv_state(min(period, max(0.0, give_up - time.monotonic())))
    if next_state is None:
        rejected = link.counts["states_rejected"]
        raise LoopError(
            f"the plant sent no {'usable ' if rejected else ''}state for {STATE_TIMEOUT:.0f} s"
            + (f" ({rejected} rejected as non-finite or misshapen)" if rejected else "")
            + ": check the link and the firmware"
        )
    return _newest(link, next_state) if profile.mode == "realtime" else next_state


def _newest(link: Link, state):
    """Behind the plant's clock: act on the newest state received, not a stale one."""
    link.service(0.0)
    while link.states:
        state = link.states.popleft()
    return state


def _safe_stop(
    link: Link, state, recorder: Recorder, stats: LoopStats, episode_cost: float, why: str, error: str
) -> None:
    """The safe action, disarm, and close the segment as it is, with the error line and both ends' counters."""
    try:
        link.send_command(np.zeros(link.act_dim), state.seq)
        link.disarm(timeout=1.0)
    except LinkError:
        pass  # a plant in failsafe is already at zero actuation
    recorder.end_episode(
        dict(cost=episode_cost, interrupted=True, safe_stop=why, error=error, link=link.counters(),
             plant=link.plant_counters())
    )  # fmt: skip


def _failsafe_name(code: int) -> str:
    return mavlink.enums["MPQ_FAILSAFE"][code].name


def _segment_metadata(profile: RobotProfile, task, planner: MPPI, episode: int, version: str) -> dict:
    q = planner.q
    return dict(
        task=task.name,
        robot=profile.name,
        episode=episode,
        model_sha256=getattr(q, "sha256", None),
        model_path=str(profile.model_path) if profile.model else None,
        mppi=planner.config.to_dict(),
        backend=planner.backend.name,
        mode=profile.mode,
        starts=profile.starts,
        seed=profile.seed,
        standin_mass_scale=profile.standin_mass_scale,  # the profile allows one only for the stand-in
        standin_plant=_randomised_plant(profile, task, episode),
        code_version=version,
        start_time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        dt=task.dt,
        episode_steps=task.episode_steps,
    )


def _randomised_plant(profile: RobotProfile, task, episode: int) -> dict | None:
    """A domain-randomised stand-in's parameters for this episode (it draws them by the same rule), else None."""
    if not profile.standin_randomise:
        return None
    return plant_draw(task.bias_ranges, profile.seed, episode)


def _stop_on_signals():
    """Ctrl-C and SIGTERM set a flag the loop checks every step; a second Ctrl-C interrupts at once."""
    flag = {"stop": False}

    def handler(signum, frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return lambda: flag["stop"]


def selfcheck(profile: RobotProfile, link: bool = True) -> list[str]:
    """Check the model, the backend and (unless link=False) the plant link; report lines, raises on a failure.

    link=False is the check deploy runs on a staged release while the running service holds the port."""
    task = get_task(profile.task, profile.standin_mass_scale)
    lines = [f"robot {profile.name}: task {task.name}, backend {profile.backend}, mode {profile.mode}"]
    q = None
    if profile.model:
        q = OnnxQ(profile.model_path, task, threads=profile.threads)
        lines.append(f"model {profile.model_path}: sha256 {q.sha256}, manifest and probe OK")
    else:
        lines.append("model: none (plain MPPI)")
    config = MPPIConfig.for_task(task, **profile.mppi)
    if q is not None:
        lines.append(f"warning: {mismatch}" if (mismatch := trained_settings_mismatch(q, config)) else
                     "model's MPPI settings: the ones this profile plans with")  # fmt: skip
    planner = MPPI(task, config, profile.backend, q=q, threads=profile.threads)
    planner.warm_up(task.hanging_state()[None])  # the whole path as `run` sets it up: backend, Q, memory
    plan = planner.plan(task.hanging_state()[None])
    lines.append(f"backend {profile.backend}: built and loaded; a warm plan (K={config.K}, H={config.H}, "
                 f"{config.n_iters} iterations) in {plan.seconds * 1e3:.1f} ms")  # fmt: skip
    if hasattr(planner.backend, "replays_graphs"):  # the GPU
        if not planner.backend.replays_graphs:
            lines.append("warning: plans run kernel by kernel, not as CUDA graphs: each step costs more")
        elif planner.backend.replay_steps == 1:
            lines.append("plans replayed as CUDA graphs: one launch per control step")
        else:
            lines.append(f"plans replayed as CUDA graphs, the Q's runs between them ({planner.backend.replay_steps} "
                         "parts per control step)")  # fmt: skip
    if hasattr(planner.q, "provider"):
        lines.append(f"Q on the GPU through ONNX Runtime's {planner.q.provider}")
    if profile.fifo_priority:
        refusal = realtime_refusal(profile.fifo_priority)
        lines.append(f"realtime priority {profile.fifo_priority} (SCHED_FIFO): permitted" if refusal is None
                     else f"warning: {realtime_refused(profile.fifo_priority, refusal)}")  # fmt: skip
    signing_key = profile.signing_key()  # read now: a missing key must not wait for the service's start
    if signing_key is not None:
        lines.append(f"signing key {profile.path(profile.signing_key_file)}: read")
    if link:
        with PlantPort(profile) as url:
            plant = Link(url, task.name, task.state_dim, task.act_dim, baud=profile.baud, signing_key=signing_key)
            try:
                plant.handshake(control_period=task.dt)
                h = plant.plant_handshake
                lines.append(
                    f"plant on {url}: handshake OK (dialect v{h.dialect_version}, task {task.name}, "
                    f"dims {h.state_dim}/{h.act_dim}, period {h.control_period_us / 1000:.1f} ms)"
                )
            finally:
                plant.close()
    else:
        lines.append("plant link: not checked (--offline)")
    lines.append(f"pid {os.getpid()}: selfcheck passed")
    return lines
