"""The control loop on the robot: receive state -> obs -> MPPI (+ ONNX Q) -> send command -> record.

lockstep runs as fast as the plant answers. realtime follows the plant's clock: the plant streams a
state every control period, and a plan that takes longer than the period is not used: the next action
of the previous (shifted) plan goes out instead, the miss is counted and recorded, and after
`deadline_misses_max` misses in a row the loop commands the safe action, disarms and stops.
In realtime the loop runs at SCHED_FIFO priority (onboard/scheduling.py). Ctrl-C or SIGTERM ends the
current segment cleanly and disarms the plant.

`run` sets a run up (scheduling, planner, recorder, plant); `ControlLoop.run_episode` is one episode and
`ControlLoop.control_step` one control period of it.
"""

from __future__ import annotations

import errno
import gc
import itertools
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from firmware_bridge.dialect import mavlink
from firmware_bridge.link import ControlDenied, Link, LinkError
from firmware_bridge.plant import plant_draw
from onboard.errors import LoopError
from onboard.loop_stats import LoopStats
from onboard.mppi import MPPI, MPPIConfig
from onboard.plant_port import open_plant
from onboard.profile import RobotProfile
from onboard.qfunction import OnnxQ, trained_settings_mismatch
from onboard.recorder import Recorder, log_folder_error
from onboard.release import code_version
from onboard.scheduling import loop_scheduling
from onboard.signals import ctrl_c_ignored, stop_on_signals
from onboard.tasks import get_task

log = logging.getLogger("mpq.loop")

STATE_TIMEOUT = 2.0  # s without a state from the plant: the link is dead
STATE_LATE = 1.1  # realtime: periods after which the next state counts as lost (the plan's next action goes out)
WATCHDOG = mavlink.MPQ_FAILSAFE_WATCHDOG


def make_planner(profile: RobotProfile, task) -> MPPI:
    """The profile's MPPI with its Q (a warning where the Q was trained for other settings)."""
    q = OnnxQ(profile.model_path, task, threads=profile.threads) if profile.model else None
    config = MPPIConfig.for_task(task, **profile.mppi)
    if q is not None and (mismatch := trained_settings_mismatch(q, config)):
        log.warning(mismatch)
    return MPPI(task, config, profile.backend, q=q, threads=profile.threads)


def run(profile: RobotProfile, episodes: int, planner=None, show_status: bool = True, stop=None) -> LoopStats:
    """Run `episodes` episodes (0: until stopped) against the profile's plant, one verified segment each."""
    with open_loop(profile, planner, show_status) as loop:
        stop = stop or stop_on_signals()  # from here: a Ctrl-C while the plant is being reached interrupts that
        loop.run(episodes, stop)
        loop.stats.stopped = stop()
        return loop.stats


@contextmanager
def open_loop(profile: RobotProfile, planner=None, show_status: bool = True):
    """The loop's parts set up (scheduling, planner, recorder, the handshaken plant) as a ControlLoop, for runs
    of episodes one after another (a fleet's collector runs one at a time); on the way out the plant is stopped
    and the recorder's folder free for another run."""
    with loop_scheduling(profile) as scheduling:  # before the planner: ONNX Runtime's threads inherit it
        task = get_task(profile.task, profile.standin.mass_scale)
        planner = planner or make_planner(profile, task)
        signing_key = profile.signing_key()  # a bad key is the profile's error: refused before the log folder is made
        try:
            recorder = Recorder(profile.log_path, profile.name)
        except OSError as e:
            raise log_folder_error(profile.log_path / profile.name, e) from None
        try:
            stats = LoopStats(scheduling=scheduling)
            with open_plant(profile, task, signing_key) as link:
                yield ControlLoop(profile, task, planner, recorder, link, stats, show_status)
        finally:
            try:
                recorder.close()  # the folder's lock: another run may record into it now
            finally:
                gc.unfreeze()  # what the episodes froze (ControlLoop._start_episode), collectable again


@dataclass
class EpisodeTally:
    """What one episode has done so far."""

    steps: int = 0
    cost: float = 0.0
    misses_in_a_row: int = 0
    held_steps: int = 0  # periods the plant held an older command (ours came late or was lost)
    unarmed_steps: int = 0
    rearms: int = 0  # watchdog trips re-armed, in the episode and at its arm
    rearms_at_arm: int = 0  # of those, a trip since the last episode re-armed when this one armed: no unarmed step
    interrupted: bool = False


class ControlLoop:
    """One run's parts (profile, task, planner, recorder, a handshaken link, the run's statistics) and the
    robot's heartbeat over them."""

    def __init__(
        self,
        profile: RobotProfile,
        task,
        planner: MPPI,
        recorder: Recorder,
        link: Link,
        stats: LoopStats,
        show_status: bool,
    ):
        self.profile, self.task, self.planner, self.recorder, self.link = profile, task, planner, recorder, link
        self.stats, self.show_status = stats, show_status
        self.realtime = profile.mode == "realtime"
        self.period = stats.period = link.plant_handshake.control_period_us / 1e6 or task.dt
        self.version = code_version()  # a git call: once per run, not per episode
        self.live = show_status and sys.stderr.isatty()  # the \r line only on a terminal; logs get one per episode
        self.status_due = 0.0

    def run(self, episodes: int, stop, episode_ids: list[int] | None = None) -> None:
        """Episodes until `episodes` (0: until stopped) or stop(), numbered on from the folder's last or as
        episode_ids says; whatever ends it, the plant is left disarmed and a segment cut short by an error is
        closed with its error line."""
        try:
            for i in range(episodes) if episodes else itertools.count():
                if stop():
                    break
                self.run_episode(stop, episode_ids[i] if episode_ids else None)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):  # the log folder, not the link
                raise LoopError(
                    f"cannot write the log in {self.recorder.dir} ({e.strerror}): the plant is disarmed; "
                    "free space there (pull-data --prune) or set another log_dir"
                ) from None
            raise
        finally:
            self._leave_safe()

    def run_episode(self, stop, episode: int | None = None) -> None:
        """Reset the plant to the episode's start, arm it, step it through the episode, disarm, close the segment.
        episode: its id (None: the folder's next)."""
        link, stats = self.link, self.stats
        episode = self.recorder.next_episode if episode is None else episode
        tally = EpisodeTally()
        state = self._start_episode(episode, tally)
        started = time.monotonic()
        for t in range(self.task.episode_steps):
            if stop():
                tally.interrupted = True
                break
            state = self.control_step(t, state, tally)
            if self.live and time.monotonic() >= self.status_due:
                self.status_due = time.monotonic() + 0.25
                print("\r" + stats.line(episode, t, tally.cost, link), end="", file=sys.stderr, flush=True)
        stats.seconds += time.monotonic() - started
        link.disarm()
        self.recorder.end_episode(
            dict(
                cost=tally.cost,
                steps=tally.steps,
                interrupted=tally.interrupted,
                held_steps=tally.held_steps,
                unarmed_steps=tally.unarmed_steps,
                rearms=tally.rearms,
                rearms_at_arm=tally.rearms_at_arm,
                link=link.counters(),
                plant=link.plant_counters(),
            )
        )
        stats.episodes += 1
        if self.show_status:
            line = stats.line(episode, max(tally.steps - 1, 0), tally.cost, link)
            print(("\r" if self.live else "") + line, file=sys.stderr, flush=True)

    def _start_episode(self, episode: int, tally: EpisodeTally):
        """The plant reset to the episode's start, the planner warm and reset, the segment open, the plant armed;
        the state to plan from."""
        profile, task, link, planner = self.profile, self.task, self.link, self.planner
        rng = np.random.default_rng([profile.seed, episode])
        start = task.hanging_state() if profile.starts == "hanging" else task.initial_state(rng)
        state = link.reset(episode, state=start)
        planner.warm_up(state.state[None])  # before the watchdog runs: no control step pays for it
        planner.reset()
        # The episode's noise from its own stream: an episode is the same whichever process runs it, after whatever
        # episodes (a fleet's collectors, a resumed run). On the GPU the generators live in the captured CUDA graph,
        # and their stream runs on across episodes.
        seed = planner.config.seed
        if planner.xp is np:
            planner.reseed(None if seed is None else (seed, episode))
        # A garbage collection now, while disarmed, of what the last episode made, and what lives then (modules,
        # the planner, the link: the run's, not this episode's segment) moved out of the collector's sight: a
        # collection in a control step walks only what this episode made (over 50k startup objects took 12 ms, past
        # a 200 Hz loop's watchdog). What an earlier start froze is not walked again: in a process that loaded torch
        # (an evaluation, the demo) that took 0.3 s an episode. open_loop unfreezes it all on its way out.
        gc.collect()
        gc.freeze()
        self.recorder.start_episode(episode, _segment_metadata(profile, task, planner, episode, self.version))
        self._arm(tally)
        return _newest(link, state) if self.realtime else state  # the plant streamed while we armed: from now

    def _arm(self, tally: EpisodeTally) -> None:
        """Arm the plant. A watchdog trip latched since the last episode (its disarm lost on the wire for the
        watchdog's periods, the plant still armed) is re-armed where the profile allows it, as in an episode: only
        when the plant's answer to this arm denied it for that (a re-arm clears any failsafe; no answer is no
        reason to)."""
        try:
            self.link.arm()
        except ControlDenied as denied:
            if not self._rearmed(denied.failsafe, tally):
                raise
            tally.rearms_at_arm += 1

    def _rearmed(self, failsafe: int, tally: EpisodeTally) -> bool:
        """A watchdog trip re-armed where the profile allows it (meanwhile the plant held zero actuation: the
        states say so, armed 0); whether it was."""
        if failsafe != WATCHDOG or not self.profile.rearm_after_watchdog:
            return False
        self.link.rearm()
        tally.rearms += 1
        return True

    def control_step(self, t: int, state, tally: EpisodeTally):
        """One control period: plan from `state` (or, too late in realtime, the previous plan's next action), send,
        receive the next state, record the transition as the plant applied it; the next state."""
        stats, planner = self.stats, self.planner
        obs = self.task.obs(state.state)
        started = time.perf_counter()
        plan = planner.propose(state.state)
        compute = time.perf_counter() - started
        missed = self.realtime and compute > self.period  # too late: the previous plan's next action goes out
        u = planner.skip() if missed else planner.commit(plan)
        next_state = _exchange(self.link, u, state, self.profile, self.period, planner)
        stats.send_times.append(self.link.last_sent)
        next_state = self._after_failsafe(t, next_state, tally)
        self._record(t, state, obs, u, next_state, tally)
        ess, value = float(plan.ess[0]), float(plan.value[0])
        self.recorder.write("/mppi", dict(t=t, compute_ms=compute * 1e3, ess=ess, value=value, deadline_missed=missed))
        link = self.link
        record = link.counters()  # a new dict each call: the record itself, not copied into another
        record.update(t=t, plant=link.plant_counters())
        if link.rtts:  # none until a command has come back: left out, not null (the schema has one type)
            record["rtt_us"] = link.rtts[-1] * 1e6
        self.recorder.write("/link", record)
        self.recorder.flush()
        stats.steps += 1
        stats.deadline_misses += missed
        stats.plan_ms.append(compute * 1e3)
        tally.steps += 1
        tally.misses_in_a_row = tally.misses_in_a_row + 1 if missed else 0
        if tally.misses_in_a_row >= self.profile.deadline_misses_max:
            why = (
                f"stopped: {tally.misses_in_a_row} planning deadlines missed in a row (last plan "
                f"{compute * 1e3:.1f} ms, period {self.period * 1e3:.1f} ms): lower K or H, use a faster backend, "
                "or run in lockstep"
            )
            _safe_stop(self.link, next_state, self.recorder, tally.cost, "deadline misses", why)
            raise LoopError(why)
        return next_state

    def _record(self, t: int, state, obs, u, next_state, tally: EpisodeTally) -> None:
        """The transition as the plant applied it. What the plant did over the period comes from the state's
        command_seq: our command, an older one it held (ours came too late or was lost), or nothing (disarmed).
        Training reads it."""
        link = self.link
        applied = link.applied(next_state)
        held = next_state.command_seq != link.command_seq
        tally.held_steps += held
        tally.unarmed_steps += not next_state.armed
        action = np.asarray(u if applied is None else applied, dtype=np.float64)
        cost = float(self.task.cost(state.state, action))
        tally.cost += cost
        self.recorder.write(
            "/transition",
            dict(
                t=t,
                state=state.state.tolist(),
                obs=obs.tolist(),
                action=action.tolist(),
                commanded=np.asarray(u).tolist(),
                applied_seq=next_state.command_seq,
                held=held,
                armed=next_state.armed,
                cost=cost,
                next_state=next_state.state.tolist(),
                done=t == self.task.episode_steps - 1,
            ),
        )

    def _after_failsafe(self, t: int, state, tally: EpisodeTally):
        """Every state carries the plant's failsafe, so the host learns of one at once: a watchdog trip re-armed
        where the profile allows it (the state to go on from), any other stops the run."""
        failsafe = state.failsafe
        if not failsafe:
            return state
        if self._rearmed(failsafe, tally):
            # The re-arm took periods: plan from the newest state. The step that ends there had the actuators off
            # (from the trip until our next command), whatever the newest state says: recorded as unarmed, zeros.
            return replace(_newest(self.link, state), armed=False)
        why = (
            f"the plant latched failsafe {_failsafe_name(failsafe)} at step {t}: its actuators are off; find "
            "the cause (the loop's timing, the commands), then re-arm"
        )
        _safe_stop(self.link, state, self.recorder, tally.cost, "plant failsafe", why)
        raise LoopError(why)

    def _leave_safe(self) -> None:
        """Zero actuation first (nothing the recorder raises may keep the plant armed), then a segment an error
        cut short closed as complete, with the error's line."""
        link, recorder = self.link, self.recorder
        try:
            with ctrl_c_ignored():  # bounded: the disarm's 0.5 s, a stalled write's WRITE_TIMEOUT
                link.disarm(timeout=0.5)
        except LinkError:
            pass
        try:
            if recorder.in_episode:
                failure = sys.exc_info()[1]  # the error on its way out
                recorder.end_episode(
                    dict(
                        interrupted=True,
                        error=str(failure) or type(failure).__name__,
                        link=link.counters(),
                        plant=link.plant_counters(),
                    )
                )
        except OSError as e:  # the disk that failed mid-episode: the error above says so; the .partial stays
            log.warning("could not close the segment (%s): the next start recovers its .partial", e.strerror)


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


def _safe_stop(link: Link, state, recorder: Recorder, episode_cost: float, why: str, error: str) -> None:
    """The safe action, disarm, and close the segment as it is, with the error line and both ends' counters."""
    try:
        link.send_command(np.zeros(link.act_dim), state.seq)
        link.disarm(timeout=1.0)
    except LinkError:
        pass  # a plant in failsafe is already at zero actuation
    recorder.end_episode(
        dict(
            cost=episode_cost,
            interrupted=True,
            safe_stop=why,
            error=error,
            link=link.counters(),
            plant=link.plant_counters(),
        )
    )


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
        standin_mass_scale=profile.standin.mass_scale,  # the profile allows one only for the stand-in
        standin_plant=_randomised_plant(profile, task, episode),
        code_version=version,
        start_time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        dt=task.dt,
        episode_steps=task.episode_steps,
    )


def _randomised_plant(profile: RobotProfile, task, episode: int) -> dict | None:
    """A domain-randomised stand-in's parameters for this episode (it draws them by the same rule), else None."""
    if not profile.standin.randomise:
        return None
    return plant_draw(task.bias_ranges, profile.seed, episode)
