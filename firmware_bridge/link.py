"""The host end of the serial link: open, handshake, heartbeat, send commands, receive states, counters.

Transports are pyserial URLs, so the same code runs on /dev/ttyUSB0, a pty, or loop://. Nothing runs
in a side thread: the caller's control loop calls `recv_state`/`send_command` (and `service` when it
waits), which also send HEARTBEAT when due and read whatever arrived.
"""

from __future__ import annotations

import os
import random
import select
import time
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import serial

from firmware_bridge.dialect import DIALECT_CHECKSUM, DIALECT_VERSION, MAX_ACT, MAX_STATE, mavlink
from firmware_bridge.frames import FrameParser, LinkCounters, enable_signing

HOST_SYSTEM, HOST_COMPONENT = 255, mavlink.MAV_COMP_ID_ONBOARD_COMPUTER
HEARTBEAT_PERIOD = 1.0
RTT_WINDOW = 10000
SPIN = 0.0003  # s: how long a wait polls the port before it sleeps in select()
REQUEST_RETRY = 0.1  # s: a handshake or episode control unanswered this long is sent again (same request)
COMMAND_RESEND = 0.02  # s: lockstep, a command whose state has not come back is sent again (same seq)
WRITE_TIMEOUT = 1.0  # s a frame may wait for room in the port's output buffer: past it the plant stopped reading
PLANT_COUNTERS = (
    "watchdog_trips",
    "commands_applied",
    "commands_clipped",
    "commands_rejected",
    "commands_repeated",
    "commands_missed",
    "crc_errors",
    "seq_gaps",
    "bytes_skipped",
    "signature_errors",
)
# The host end's counters (Link.counters): its frame parser's, then the link's own.
LINK_COUNTS = ("states_rejected", "states_missed", "states_late", "requests_resent", "commands_resent")
HOST_COUNTERS = tuple(f.name for f in fields(LinkCounters)) + LINK_COUNTS
KEPT_COMMANDS = 64  # sent commands remembered by seq: what the plant applied, told by MPQ_STATE.command_seq


class LinkError(RuntimeError):
    """The link cannot be used; the message names the problem and the fix."""


class HandshakeError(LinkError):
    pass


class ControlDenied(LinkError):
    """The plant answered this episode control and denied it; failsafe: the latch that denied it (0: none, the
    handshake is missing)."""

    def __init__(self, message: str, failsafe: int = 0):
        super().__init__(message)
        self.failsafe = failsafe

    def __reduce__(self):  # as raised, through pickling (a Ray collector's error reaches the driver)
        return type(self), (str(self), self.failsafe)


def port_holder(path: str) -> str:
    """' (pid N: its command)' of the process whose flock holds the device `path`, as /proc/locks tells (Linux);
    '' where it tells nothing."""
    try:
        st = os.stat(path)
        device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()  # 1: FLOCK  ADVISORY  WRITE 1234 00:19:3 0 EOF
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device:
                pid = fields[4]
                command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
                return f" (pid {pid}: {' '.join(command.split())[:80]})"
    except (OSError, ValueError):
        pass
    return ""


@dataclass
class PlantState:
    state: np.ndarray  # float64 copy of the float32 wire values
    seq: int
    command_seq: int  # the last command the plant applied
    episode_id: int
    time_us: int
    received: float  # host monotonic time
    reset_request: int = 0  # the reset that started its episode
    armed: bool = False  # whether the period that ended here drove the actuators with command_seq's command
    failsafe: int = 0  # the plant's latched failsafe (MPQ_FAILSAFE), 0: none


class Link:
    def __init__(
        self,
        url: str,
        task: str,
        state_dim: int,
        act_dim: int,
        baud: int = 115200,
        signing_key: bytes | None = None,
        lost_after: float = 3.0,
        dialect_version: int = DIALECT_VERSION,
    ):
        if len(task.encode()) > 16:
            raise LinkError(f"task name {task!r} is longer than the 16 characters the handshake carries")
        if state_dim > MAX_STATE or act_dim > MAX_ACT:
            raise LinkError(
                f"task {task!r} has a state of {state_dim} values and {act_dim} commands: one frame carries at most "
                f"{MAX_STATE} and {MAX_ACT} (widen mpq.xml and bump MPQ_DIALECT_VERSION)"
            )
        self.url, self.task, self.state_dim, self.act_dim = url, task, state_dim, act_dim
        self.dialect_version = dialect_version
        self.lost_after = lost_after
        try:  # exclusive: two controllers on one plant (a second run, a selfcheck during a run) is refused here
            self.port = serial.serial_for_url(
                url, baudrate=baud, timeout=0, write_timeout=WRITE_TIMEOUT, exclusive=True
            )
        except serial.SerialException as e:
            if "exclusively lock" in str(e):
                raise LinkError(
                    f"serial port {url!r} is in use by another process{port_holder(url)}: stop it first (one "
                    "controller per plant)"
                ) from None
            raise LinkError(f"cannot open serial port {url!r} ({e}): check the device path or URL") from None
        except (ValueError, OverflowError) as e:  # a baud rate the port cannot take, a malformed URL
            raise LinkError(
                f"cannot open serial port {url!r} at {baud} baud ({e}): check the device path or URL and the baud rate"
            ) from None
        try:
            self._fd = self.port.fileno()
        except (AttributeError, NotImplementedError, OSError, serial.SerialException):
            self._fd = None
        self.mav = mavlink.MAVLink(self, srcSystem=HOST_SYSTEM, srcComponent=HOST_COMPONENT)  # writes via self.write
        receiver = mavlink.MAVLink(None, srcSystem=HOST_SYSTEM, srcComponent=HOST_COMPONENT)
        if signing_key is not None:
            enable_signing(self.mav, signing_key)
            enable_signing(receiver, signing_key, sign_outgoing=False)
        self.parser = FrameParser(receiver)
        self.states: deque[PlantState] = deque()
        self.plant_handshake = None
        self.status = None  # the latest MPQ_STATUS
        self.command_seq = 0
        self.request_id = random.randrange(1, 1 << 31)  # distinct from any earlier host's requests
        self.last_heard: float | None = None
        self.next_heartbeat = 0.0
        self._sent_at: dict[int, float] = {}
        self.last_sent = 0.0  # monotonic time of the last command
        self.rtts: deque[float] = deque(maxlen=RTT_WINDOW)
        self.commands: dict[int, list[float]] = {}  # the last KEPT_COMMANDS sent, by seq
        self._last_command = None  # the last MPQ_COMMAND sent: sent again, as it was, when its state is lost
        self.last_state_seq = 0  # states at or below it are copies the plant sent again: dropped
        self._plant_counters: dict = {}  # from the latest MPQ_STATUS
        self.counts = dict.fromkeys(LINK_COUNTS, 0)

    # --- connection ----------------------------------------------------------------------------
    def handshake(self, timeout: float = 2.0, control_period: float = 0.0) -> None:
        """Exchange dialect, task and dims with the plant (sent again every REQUEST_RETRY until answered);
        raises HandshakeError on a mismatch or silence."""
        self.plant_handshake = None
        self.last_state_seq = 0  # a plant that restarted counts its states from 1 again
        message = self.mav.mpq_handshake_encode(
            self.dialect_version,
            DIALECT_CHECKSUM,
            self.task.encode(),
            self.state_dim,
            self.act_dim,
            int(control_period * 1e6),
            mavlink.MPQ_ROLE_HOST,
            0,
        )
        if not self._retry(lambda: self.mav.send(message), lambda: self.plant_handshake is not None, timeout):
            raise HandshakeError(
                f"no handshake from the plant within {timeout:.1f} s on {self.port.name}: "
                "is the firmware or stand-in running on that port, at that baud?"
            )
        theirs = self.plant_handshake
        ours = dict(
            dialect=(self.dialect_version, DIALECT_CHECKSUM), task=self.task, dims=(self.state_dim, self.act_dim)
        )
        plant = dict(
            dialect=(theirs.dialect_version, theirs.dialect_checksum),
            task=theirs.task.decode() if isinstance(theirs.task, bytes) else theirs.task,
            dims=(theirs.state_dim, theirs.act_dim),
        )
        wrong = [k for k in ours if ours[k] != plant[k]]
        if wrong:
            detail = "; ".join(f"{k}: host {ours[k]} vs plant {plant[k]}" for k in wrong)
            raise HandshakeError(f"handshake mismatch ({detail}): deploy matching code and models to both ends")
        if not theirs.accepted:
            raise HandshakeError("the plant refused the handshake: check its task and firmware version")

    def close(self) -> None:
        self.port.close()

    @property
    def lost(self) -> bool:
        """True when the plant has been silent for longer than `lost_after` seconds."""
        return self.last_heard is None or time.monotonic() - self.last_heard > self.lost_after

    # --- episode control ---------------------------------------------------------------------------
    def reset(self, episode_id: int, state=None, seed: int | None = None, timeout: float = 2.0) -> PlantState:
        """Reset the plant to `state` (or a seeded random one); returns the first state of the episode.

        The plant echoes the request's id in its states and status, so states from before the reset,
        still in flight, are never taken for the new episode's first one.
        """
        if state is not None:
            state = np.asarray(state, dtype=np.float64).reshape(-1)
            if state.size != self.state_dim:
                raise ValueError(f"reset state has {state.size} values, the plant's state has {self.state_dim}")
            action, values, dim = mavlink.MPQ_EPISODE_RESET_GIVEN, list(state), len(state)
        else:
            action, values, dim = mavlink.MPQ_EPISODE_RESET_SEEDED, [], 0
        request = self._next_request()

        def answered() -> bool:
            if self._answered(request) and self.status.last_result != mavlink.MAV_RESULT_ACCEPTED:
                return True  # refused
            return any(s.reset_request == request for s in self.states)

        send = self._episode_control_sender(action, episode_id, seed or 0, values, dim, request)
        if not self._retry(send, answered, timeout):
            raise LinkError(f"the plant did not answer a reset within {timeout:.1f} s: is it running and handshaken?")
        self.states = deque(s for s in self.states if s.reset_request == request)
        if not self.states:
            raise LinkError(
                "the plant refused the reset: the state is outside its limits, or there is no matching handshake "
                "(the plant's log says which: the stand-in's is standin.log in the robot's log folder)"
            )
        return self.states.popleft()

    def arm(self, timeout: float = 2.0) -> None:
        self._control_and_check(mavlink.MPQ_EPISODE_ARM, timeout)

    def rearm(self, timeout: float = 2.0) -> None:
        self._control_and_check(mavlink.MPQ_EPISODE_REARM, timeout)

    def disarm(self, timeout: float = 2.0) -> None:
        self._control_and_check(mavlink.MPQ_EPISODE_DISARM, timeout)

    def _control_and_check(self, action: int, timeout: float) -> None:
        """Send an episode control until the plant's status answers it; raise if the plant denied it."""
        episode = self.status.episode_id if self.status else 0
        request = self._next_request()
        send = self._episode_control_sender(action, episode, 0, [], 0, request)
        if not self._retry(send, lambda: self._answered(request), timeout):
            raise LinkError(f"no status from the plant within {timeout:.1f} s after an episode control")
        if self.status.last_result == mavlink.MAV_RESULT_ACCEPTED:
            return  # a later status may say otherwise (a watchdog trip since): the next state tells the loop
        verb = "disarm" if action == mavlink.MPQ_EPISODE_DISARM else "arm"
        failsafe = self.status.failsafe
        if failsafe:
            reason = mavlink.enums["MPQ_FAILSAFE"][failsafe].name
            raise ControlDenied(f"the plant did not {verb}: failsafe {reason} latched (re-arm to clear it)", failsafe)
        raise ControlDenied(f"the plant did not {verb}: it has no matching handshake (handshake first)")

    def _next_request(self) -> int:
        self.request_id = self.request_id % 0xFFFFFFFF + 1
        return self.request_id

    def _answered(self, request: int) -> bool:
        return self.status is not None and self.status.last_request == request

    def _episode_control_sender(self, action: int, episode_id: int, seed: int, values, dim: int, request: int):
        """A function that sends this episode control: the same request each time (the plant does it once)."""
        padded = [float(v) for v in values] + [0.0] * (MAX_STATE - len(values))
        message = self.mav.mpq_episode_control_encode(episode_id, seed, action, dim, request, padded)
        return lambda: self.mav.send(message)

    def _retry(self, send, answered, timeout: float) -> bool:
        """send() now and every REQUEST_RETRY until answered() or `timeout` seconds; whether it was answered."""
        end = time.monotonic() + timeout
        send()
        while not self._wait(answered, min(REQUEST_RETRY, end - time.monotonic())):
            if time.monotonic() >= end:
                return False
            self.counts["requests_resent"] += 1
            send()
        return True

    # --- the control loop's calls ---------------------------------------------------------------------
    def send_command(self, u, state_seq: int, copies: int = 1) -> int:
        """Send u (answering state `state_seq`), `copies` times back to back (the plant applies one: on a
        lossy link, all of them must be lost for the command to be); returns the command's sequence number."""
        u = [float(v) for v in np.asarray(u).reshape(-1)]
        if len(u) != self.act_dim:
            raise ValueError(f"command has {len(u)} values, the plant takes {self.act_dim}")
        self.command_seq += 1
        now = time.monotonic()
        self._sent_at[self.command_seq] = self.last_sent = now
        if len(self._sent_at) > RTT_WINDOW:
            self._sent_at.pop(next(iter(self._sent_at)))
        self.commands[self.command_seq] = [float(np.float32(v)) for v in u]  # as the wire carries it
        if len(self.commands) > KEPT_COMMANDS:
            self.commands.pop(next(iter(self.commands)))
        self._last_command = self.mav.mpq_command_encode(
            int(now * 1e6), self.command_seq, state_seq, len(u), u + [0.0] * (MAX_ACT - len(u))
        )
        for _ in range(copies):
            self.mav.send(self._last_command)
        return self.command_seq

    def exchange(self, u, state_seq: int, timeout: float, meanwhile=None) -> PlantState | None:
        """Lockstep: send u answering state `state_seq` and return the state the plant sends after applying
        it (or after latching a failsafe); the same command goes again every COMMAND_RESEND until it comes.
        The plant applies a command once, by its seq, and answers a repeat with that state again.
        meanwhile(), if given, runs once while the plant steps. None after `timeout` seconds."""
        seq = self.send_command(u, state_seq)
        end = time.monotonic() + timeout
        if meanwhile is not None:
            meanwhile()

        def came_back() -> bool:
            return any(s.command_seq >= seq or s.failsafe or s.seq > state_seq + 1 for s in self.states)

        while not self._wait(came_back, min(COMMAND_RESEND, end - time.monotonic())):
            if time.monotonic() >= end:
                return None
            self.counts["commands_resent"] += 1
            self.mav.send(self._last_command)
        return self.states.popleft()

    def applied(self, state: PlantState) -> list[float] | None:
        """The command the plant applied over the period that ended in `state` (zeros when it was disarmed
        or in failsafe); None if that command is no longer remembered."""
        if not state.armed or state.command_seq == 0:
            return [0.0] * self.act_dim
        return self.commands.get(state.command_seq)

    def recv_state(self, timeout: float) -> PlantState | None:
        """The next plant state, or None after `timeout` seconds."""
        return self.states.popleft() if self._wait(lambda: bool(self.states), timeout) else None

    def service(self, timeout: float = 0.0) -> None:
        """Send HEARTBEAT when due and take in whatever arrived, waiting up to `timeout` for bytes."""
        now = time.monotonic()
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + HEARTBEAT_PERIOD
            self.mav.send(
                self.mav.heartbeat_encode(
                    mavlink.MAV_TYPE_ONBOARD_CONTROLLER, mavlink.MAV_AUTOPILOT_INVALID, 0, 0, mavlink.MAV_STATE_ACTIVE
                )
            )
        data = self._read(timeout)
        if data:
            self._take(self.parser.feed(data))

    def write(self, data: bytes) -> None:
        """pymavlink's send() writes here: straight to the fd where there is one (pyserial's write adds a
        select and a loop per frame)."""
        if self._fd is None:
            try:
                self.port.write(data)
            except serial.SerialTimeoutException:
                raise LinkError(self._stalled()) from None
            return
        view = memoryview(data)
        # set when the buffer is full, cleared by any progress: a write that never blocks reads no clock
        deadline = None
        while view:
            try:
                view = view[os.write(self._fd, view) :]
                deadline = None
            except BlockingIOError:
                now = time.monotonic()
                deadline = deadline or now + WRITE_TIMEOUT
                if now >= deadline:
                    raise LinkError(self._stalled()) from None
                select.select([], [self._fd], [], min(0.1, deadline - now))
            except OSError as e:
                raise LinkError(f"writing to {self.port.name} failed ({e.strerror}): the plant's end is gone") from None

    def _stalled(self) -> str:
        return (
            f"writing to {self.port.name} stalled for {WRITE_TIMEOUT:g} s: the plant's end stopped reading (check that "
            "the firmware runs and reads this port)"
        )

    def _read(self, timeout: float) -> bytes:
        """Whatever arrived within `timeout`. On a real fd: select + one non-blocking read (pyserial opens
        ports non-blocking), because re-setting pyserial's timeout reconfigures the port every call."""
        if self._fd is None:  # URL transports without a file descriptor, e.g. loop://
            self.port.timeout = max(0.0, timeout)
            return self.port.read(max(1, self.port.in_waiting))
        spin_until = time.perf_counter() + min(timeout, SPIN)
        while True:  # a reply in lockstep takes ~0.1 ms: polling that long beats a sleep and a wake-up
            data = self._read_fd()
            if data or time.perf_counter() >= spin_until:
                break
        if data or timeout <= SPIN:
            return data
        ready, _, _ = select.select([self._fd], [], [], timeout - SPIN)
        if not ready:
            return b""
        data = self._read_fd()
        if not data:  # readable yet empty: the other end hung up
            raise LinkError(f"{self.port.name} was closed by the plant's end")
        return data

    def _read_fd(self) -> bytes:
        """One non-blocking read; b"" when nothing is waiting (a tty in pyserial's polling mode says so)."""
        try:
            return os.read(self._fd, 4096)
        except BlockingIOError:
            return b""
        except OSError as e:
            raise LinkError(f"reading {self.port.name} failed ({e.strerror}): the plant's end is gone") from None

    def counters(self) -> dict:
        """This end's counters: the frame parser's and the link's own."""
        return {**self.parser.counters.to_dict(), **self.counts}

    def plant_counters(self) -> dict:
        """The plant's own counters from its latest MPQ_STATUS (the host-to-plant direction's faults)."""
        return self._plant_counters

    def stats(self) -> dict:
        """Link counters, and command-to-state latency: in lockstep the round trip (pack, write, plant
        step, reply, parse); in realtime it includes the wait for the plant's next period."""
        rtt = np.array(self.rtts) * 1e6 if self.rtts else None
        return dict(
            **self.counters(),
            rtt_us_p50=float(np.percentile(rtt, 50)) if rtt is not None else None,
            rtt_us_p99=float(np.percentile(rtt, 99)) if rtt is not None else None,
            commands_sent=self.command_seq,
        )

    # --- internals -----------------------------------------------------------------------------------
    def _wait(self, condition, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not condition():
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            self.service(min(remaining, HEARTBEAT_PERIOD))
        return True

    def _take(self, messages) -> None:
        now = time.monotonic()
        for msg in messages:
            self.last_heard = now
            kind = msg.get_type()
            if kind == "MPQ_STATE":
                if msg.seq <= self.last_state_seq:
                    continue  # a copy the plant sent again (its first reached us too)
                state = np.array(msg.state[: msg.state_dim], dtype=np.float64)
                if state.size != self.state_dim or not np.all(np.isfinite(state)):
                    self.counts["states_rejected"] += 1  # non-finite or misshapen: counted, never planned on
                    continue
                if self.last_state_seq:
                    self.counts["states_missed"] += msg.seq - self.last_state_seq - 1
                self.last_state_seq = msg.seq
                sent = self._sent_at.pop(msg.command_seq, None)
                if sent is not None:
                    self.rtts.append(now - sent)
                self.states.append(
                    PlantState(
                        state,
                        msg.seq,
                        msg.command_seq,
                        msg.episode_id,
                        msg.time_us,
                        now,
                        msg.reset_request,
                        bool(msg.armed),
                        msg.failsafe,
                    )
                )
            elif kind == "MPQ_STATUS":
                self.status = msg
                self._plant_counters = {name: getattr(msg, name) for name in PLANT_COUNTERS}  # once a status
            elif kind == "MPQ_HANDSHAKE" and msg.role == mavlink.MPQ_ROLE_PLANT:
                self.plant_handshake = msg
