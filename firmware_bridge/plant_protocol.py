"""The protocol a plant's firmware runs, as an I/O-free state machine: what the stand-in serves and what a
microcontroller's firmware must do (the same rules, firmware_bridge/mpq.xml's dialect):

- Handshake: dialect version and checksum, task and dimensions must match ours, or we refuse to arm.
- lockstep: physics advances exactly one control period per valid command, then we send the state.
  realtime: physics advances one control period per period of wall-clock time, holding the last command.
- Watchdog (realtime, armed): no valid command for `timeout` (default 3 control periods) -> zero
  actuation and failsafe latched, reported in MPQ_STATUS, until MPQ_EPISODE_REARM.
- Commands outside the actuator range are clipped and counted; non-finite ones are rejected and latch
  the failsafe (zero actuation). Commands of the wrong size, stale or out-of-order ones, and any while
  disarmed are rejected and counted.
- Reset to a given full physics state or a seeded random one (qpos, qvel in the XML's `reset_low`/`reset_high`).
- HEARTBEAT and MPQ_STATUS at 1 Hz; exits cleanly on SIGTERM/SIGINT, and when the host closes the pty.
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np

from firmware_bridge.dialect import DIALECT_CHECKSUM, DIALECT_VERSION, MAX_STATE, mavlink
from firmware_bridge.plant import MujocoPlant

PLANT_SYSTEM, PLANT_COMPONENT = 1, mavlink.MAV_COMP_ID_AUTOPILOT1
STATUS_PERIOD = 1.0  # s, also the HEARTBEAT period
STALE_STATES = 3  # realtime: a command answering a state older than this many periods is refused


def pad(values: list[float], size: int) -> list[float]:
    return values + [0.0] * (size - len(values))


def time_us(seconds: float) -> int:
    return int(round(seconds * 1e6))


class PlantProtocol:
    """The protocol state machine a plant's firmware runs, with no I/O: messages and the clock in, frames out
    through `send` (handshake, arming, episodes, the watchdog, the failsafes).

    `now` is seconds on the monotonic clock. The stand-in's main loop and the tests drive it.
    """

    def __init__(self, plant: MujocoPlant, task: str, mode: str, send, watchdog_periods: float = 3.0):
        self.plant, self.task, self.mode, self.send = plant, task, mode, send
        self.state_dim = plant.state_dim
        self.act_dim = plant.model.nu
        self.period = plant.control_period
        if not math.isfinite(watchdog_periods) or watchdog_periods <= 0:  # NaN would never trip: no failsafe
            raise ValueError(f"--watchdog-periods {watchdog_periods!r}: use a finite number above 0 (default 3)")
        self.watchdog_timeout = watchdog_periods * self.period
        self.ctrl_low, self.ctrl_high = plant.ctrl_low.tolist(), plant.ctrl_high.tolist()
        self.handshake_ok = False
        self.armed = False
        self.failsafe = mavlink.MPQ_FAILSAFE_NONE
        self.episode_id = 0
        self.state_seq = 0
        self.last_command_seq = 0
        self.last_request = 0  # request_id of the last episode control handled
        self.reset_request = 0  # request_id of the reset that started this episode
        self.held = np.zeros(self.act_dim)  # what the actuators do now
        self.held_seq = 0  # the command in `held` (0: none, zero actuation)
        self.sim_time = 0.0  # lockstep clock: simulated seconds
        self.last_valid_command: float | None = None
        self.next_step: float | None = None  # realtime: when the next control period ends
        self.next_status = 0.0
        self.counts = dict(
            watchdog_trips=0,
            commands_applied=0,
            commands_clipped=0,
            commands_rejected=0,
            commands_repeated=0,
            commands_missed=0,
        )
        self.link_counters = None  # the serving loop's FrameParser counters, reported in status
        self.last_result = mavlink.MAV_RESULT_ACCEPTED  # of the last episode control
        self.last_state_msg = None  # the last MPQ_STATE sent: sent again for a repeated request
        self.on_apply = None  # called with (seq, u) for every command applied (--applied-log)
        self.step_armed = False  # whether the last period's physics ran with the held command

    # --- inputs -----------------------------------------------------------------------------
    def handle(self, msg, now: float) -> None:
        kind = msg.get_type()
        if kind == "MPQ_COMMAND":
            self._on_command(msg, now)
        elif kind == "MPQ_EPISODE_CONTROL":
            self._on_episode_control(msg, now)
        elif kind == "MPQ_HANDSHAKE":
            self._on_handshake(msg)
        elif kind == "COMMAND_LONG":
            self._on_command_long(msg, now)

    def tick(self, now: float) -> None:
        """Time passes: realtime stepping, the watchdog, periodic heartbeat and status."""
        if self.mode == "realtime":
            if self.armed and self.last_valid_command is not None:
                if now - self.last_valid_command > self.watchdog_timeout:
                    self.counts["watchdog_trips"] += 1
                    self._latch(mavlink.MPQ_FAILSAFE_WATCHDOG, now)
            if self.next_step is None:
                self.next_step = now + self.period
            while now >= self.next_step:
                self.next_step += self.period
                self._send_state(now, self._step())
        if now >= self.next_status:
            self.next_status = now + STATUS_PERIOD
            self._send_heartbeat()
            self._send_status(now)

    def deadline(self, now: float) -> float:
        """Seconds until tick() has something to do."""
        due = [self.next_status]
        if self.mode == "realtime":
            due.append(self.next_step if self.next_step is not None else now)
            if self.armed and self.last_valid_command is not None:
                due.append(self.last_valid_command + self.watchdog_timeout)
        return max(0.0, min(due) - now)

    def safe(self) -> None:
        """Zero actuation (the safe state) and disarm: on failsafe and on exit."""
        self.armed = False
        self.held[:] = 0.0
        self.held_seq = 0  # zero actuation is no command's: a re-armed plant drives nothing until the next one
        self.plant.data.ctrl[:] = 0.0

    # --- message handlers --------------------------------------------------------------------
    def _on_handshake(self, msg) -> None:
        task = msg.task.decode() if isinstance(msg.task, bytes) else msg.task
        self.handshake_ok = (
            msg.role == mavlink.MPQ_ROLE_HOST
            and msg.dialect_version == DIALECT_VERSION
            and msg.dialect_checksum == DIALECT_CHECKSUM
            and task == self.task
            and msg.state_dim == self.state_dim
            and msg.act_dim == self.act_dim
        )
        if self.handshake_ok and not self.armed:
            self.last_command_seq = 0  # a (re)connected host starts its command count again
        elif not self.handshake_ok:
            self.safe()
        self.send(
            mavlink.MAVLink_mpq_handshake_message(
                DIALECT_VERSION,
                DIALECT_CHECKSUM,
                self.task.encode(),
                self.state_dim,
                self.act_dim,
                time_us(self.period),
                mavlink.MPQ_ROLE_PLANT,
                int(self.handshake_ok),
            )
        )

    def _on_episode_control(self, msg, now: float) -> None:
        """Episode controls are idempotent: the host sends one again when its answer is lost, with the same
        request_id, and a reset already done is answered again, never done twice."""
        action = msg.action
        repeated = msg.request_id == self.last_request and msg.request_id != 0
        self.last_request = msg.request_id
        ok = True
        if not self.handshake_ok:
            self.counts["commands_rejected"] += 1  # no episode control from a host we have not verified
            ok = False
        elif action in (mavlink.MPQ_EPISODE_RESET_GIVEN, mavlink.MPQ_EPISODE_RESET_SEEDED):
            if repeated and msg.request_id == self.reset_request:
                if self.last_state_msg is not None and self.last_command_seq == 0:
                    self.send(self.last_state_msg)  # the episode's first state, whose first copy was lost
            else:
                initial = self._initial_state(msg)
                if initial is None:
                    self.counts["commands_rejected"] += 1
                    ok = False
                else:
                    self.safe()
                    self.episode_id = msg.episode_id
                    self.reset_request = msg.request_id
                    self.last_command_seq = 0
                    if self.plant.ranges:  # domain randomisation: this episode's plant, drawn by its id
                        plant = self.plant.draw_for(msg.episode_id)
                        print(json.dumps(dict(episode=msg.episode_id, plant=plant)), file=sys.stderr, flush=True)
                    self.plant.reset(initial)
                    self.sim_time = 0.0
                    self._send_state(now)
        elif action == mavlink.MPQ_EPISODE_ARM:
            ok = self._arm(now)
        elif action == mavlink.MPQ_EPISODE_DISARM:
            self._disarm()
        elif action == mavlink.MPQ_EPISODE_REARM:
            self.failsafe = mavlink.MPQ_FAILSAFE_NONE
            ok = self._arm(now)
        self.last_result = mavlink.MAV_RESULT_ACCEPTED if ok else mavlink.MAV_RESULT_DENIED
        self._send_status(now)

    def _on_command_long(self, msg, now: float) -> None:
        """MAVLink's standard arm and disarm (MAV_CMD_COMPONENT_ARM_DISARM), answered with COMMAND_ACK, so
        that standard tools (mavutil, ground stations) can arm and disarm the plant."""
        if msg.target_system not in (0, PLANT_SYSTEM):
            return
        if msg.command != mavlink.MAV_CMD_COMPONENT_ARM_DISARM:
            result = mavlink.MAV_RESULT_UNSUPPORTED
        elif msg.param1 == 1:
            result = mavlink.MAV_RESULT_ACCEPTED if self._arm(now) else mavlink.MAV_RESULT_DENIED
        elif msg.param1 == 0:
            self._disarm()
            result = mavlink.MAV_RESULT_ACCEPTED
        else:
            result = mavlink.MAV_RESULT_DENIED
        self.send(mavlink.MAVLink_command_ack_message(msg.command, result, 0, 0, 0, 0))

    def _initial_state(self, msg):
        """The requested start state, or None when the plant must refuse it (why: on stderr, the stand-in's log)."""
        if msg.action == mavlink.MPQ_EPISODE_RESET_GIVEN:
            state = np.array(msg.state[: msg.state_dim], dtype=np.float64)
        else:
            state = self.plant.seeded_start(msg.seed)
        why = "no start state" if state is None else self.plant.invalid_state(state)
        if why:
            print(json.dumps(dict(episode=msg.episode_id, reset_refused=why)), file=sys.stderr, flush=True)
            return None
        return state

    def _arm(self, now: float) -> bool:
        """Arm if allowed (a matching handshake, no failsafe latched); whether the plant is armed."""
        if self.handshake_ok and self.failsafe == mavlink.MPQ_FAILSAFE_NONE:
            self.last_valid_command = now  # the watchdog counts from the last arm request (one sent again too)
            if not self.armed:
                self.armed = True
                self._send_heartbeat()  # standard tools see the armed state now, not within a second
        return self.armed

    def _disarm(self) -> None:
        was_armed = self.armed
        self.safe()
        if was_armed:
            self._send_heartbeat()

    def _on_command(self, msg, now: float) -> None:
        if msg.seq == self.last_command_seq != 0:  # applied already: a copy (realtime), or its reply was lost
            self.counts["commands_repeated"] += 1
            if self.mode == "lockstep":
                self.send(self.last_state_msg)  # the reply again, no step
            return
        if not self.armed or msg.act_dim != self.act_dim or msg.seq <= self.last_command_seq:
            self.counts["commands_rejected"] += 1
            return
        if self.mode == "lockstep" and msg.state_seq != self.state_seq:
            self.counts["commands_rejected"] += 1  # a stale or duplicated command must not step twice
            return
        if msg.state_seq + STALE_STATES < self.state_seq or msg.state_seq > self.state_seq:
            self.counts["commands_rejected"] += 1  # planned from a state long gone (or never sent)
            return
        u = msg.u[: self.act_dim]
        if not all(math.isfinite(v) for v in u):
            self.counts["commands_rejected"] += 1
            self._latch(mavlink.MPQ_FAILSAFE_NONFINITE_COMMAND, now)
            if self.mode == "lockstep":
                self._send_state(now)  # the host waits for a state: it learns of the failsafe from this one
            return
        clipped = [min(max(v, lo), hi) for v, lo, hi in zip(u, self.ctrl_low, self.ctrl_high, strict=True)]
        if clipped != list(u):
            self.counts["commands_clipped"] += 1
        self.held[:] = clipped
        self.held_seq = msg.seq
        if self.last_command_seq:
            self.counts["commands_missed"] += msg.seq - self.last_command_seq - 1
        self.last_command_seq = msg.seq
        self.last_valid_command = now
        self.counts["commands_applied"] += 1
        if self.on_apply is not None:
            self.on_apply(msg.seq, clipped)
        if self.mode == "lockstep":
            self._send_state(now, self._step())

    def _latch(self, reason: int, now: float) -> None:
        self.failsafe = reason
        self.safe()
        self._send_status(now)

    # --- outputs -----------------------------------------------------------------------------
    def _step(self) -> np.ndarray:
        """One control period of physics; returns the new state."""
        # What the next state reports: whether this period drove the actuators with a command.
        self.step_armed = self.armed and self.held_seq != 0
        state = self.plant.step(self.held if self.armed else np.zeros(self.act_dim))
        self.sim_time += self.period
        if self.plant.fault(state) and self.failsafe != mavlink.MPQ_FAILSAFE_PLANT_FAULT:
            self.failsafe = mavlink.MPQ_FAILSAFE_PLANT_FAULT  # latched, like the other failsafes
            self.safe()
            self._send_status(time.monotonic())
        return state

    def _send_state(self, now: float, state: np.ndarray | None = None) -> None:
        self.state_seq += 1
        clock = self.sim_time if self.mode == "lockstep" else now
        self.last_state_msg = mavlink.MAVLink_mpq_state_message(
            time_us=time_us(clock),
            seq=self.state_seq,
            command_seq=self.last_command_seq,
            episode_id=self.episode_id,
            reset_request=self.reset_request,
            state_dim=self.state_dim,
            armed=int(state is not None and self.step_armed),  # a reset's state: nothing was driven
            failsafe=self.failsafe,
            state=pad((self.plant.state if state is None else state).tolist(), MAX_STATE),
        )
        self.send(self.last_state_msg)

    def _send_heartbeat(self) -> None:
        status = (
            mavlink.MAV_STATE_CRITICAL
            if self.failsafe
            else (mavlink.MAV_STATE_ACTIVE if self.armed else mavlink.MAV_STATE_STANDBY)
        )
        self.send(
            mavlink.MAVLink_heartbeat_message(
                mavlink.MAV_TYPE_GENERIC,
                mavlink.MAV_AUTOPILOT_GENERIC,  # a vehicle to standard tools: mavutil reads its armed flag
                mavlink.MAV_MODE_FLAG_SAFETY_ARMED if self.armed else 0,
                0,
                status,
                3,
            )
        )

    def _send_status(self, now: float) -> None:
        link = self.link_counters
        self.send(
            mavlink.MAVLink_mpq_status_message(
                time_us(now),
                self.episode_id,
                int(self.armed),
                self.failsafe,
                mavlink.MPQ_MODE_LOCKSTEP if self.mode == "lockstep" else mavlink.MPQ_MODE_REALTIME,
                int(self.handshake_ok),
                self.counts["watchdog_trips"],
                self.counts["commands_applied"],
                self.counts["commands_clipped"],
                self.counts["commands_rejected"],
                link.crc_errors if link else 0,
                link.seq_gaps if link else 0,
                link.bytes_skipped if link else 0,
                link.signature_errors if link else 0,
                self.last_request,
                self.last_result,
                self.counts["commands_repeated"],
                self.counts["commands_missed"],
            )
        )
