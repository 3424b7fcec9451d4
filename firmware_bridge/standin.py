"""The firmware stand-in: the TRUE MuJoCo plant behind a serial port, behaving as a robot's MCU must.

`python -m firmware_bridge.standin --task pendulum` opens a pty pair, prints {"port": ...} as one JSON
line on stdout for the host, and serves the dialect (firmware_bridge/mpq.xml) on it; `--device PATH`
serves a real serial device instead, with the protocol a real firmware follows
(firmware_bridge/plant_protocol.py). Exits cleanly on SIGTERM/SIGINT, and when the host closes the pty.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sys
import time
import tty
from pathlib import Path

from firmware_bridge.cli import ArgumentParser
from firmware_bridge.dialect import CONTROL_PERIOD_LIMITS, MAX_ACT, MAX_STATE, mavlink
from firmware_bridge.frames import FrameParser, enable_signing, read_signing_key
from firmware_bridge.paths import MODELS_DIR
from firmware_bridge.plant import MujocoPlant, model_xml, parse_mass_scale, parse_randomise
from firmware_bridge.plant_protocol import PLANT_COMPONENT, PLANT_SYSTEM, PlantProtocol


class SerialEndpoint:
    """One end of a byte pipe for select(): a pty master fd or an opened serial device."""

    def __init__(self, fd: int, keep_open: int | None = None, serial_port=None):
        self.fd = fd
        self.keep_open = keep_open  # our copy of the pty slave: held until the host connects
        self.serial_port = serial_port
        self.dropped_bytes = 0
        os.set_blocking(fd, False)

    @classmethod
    def pty(cls) -> tuple[SerialEndpoint, str]:
        master, slave = os.openpty()
        tty.setraw(slave)  # bytes, not lines: no echo, no line editing
        return cls(master, keep_open=slave), os.ttyname(slave)

    @classmethod
    def device(cls, path: str, baud: int) -> SerialEndpoint:
        import serial

        try:
            port = serial.Serial(path, baudrate=baud, timeout=0)
        except (serial.SerialException, ValueError) as e:
            raise ValueError(
                f"cannot serve {path} at {baud} baud ({e}): give a serial device (/dev/ttyUSB0, /dev/ttyTHS1) and a "
                "baud rate it takes, or leave --device out for a new pty"
            ) from None
        return cls(port.fileno(), serial_port=port)

    def read(self) -> bytes | None:
        """Available bytes; b"" if none; None when the host closed its end of the pty."""
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return b""
        except OSError as e:
            if e.errno == errno.EIO:
                return None
            raise
        if data and self.keep_open is not None:
            os.close(self.keep_open)  # from now on, the host closing its end reads as EIO
            self.keep_open = None
        return data if data else None

    def write(self, data: bytes) -> None:
        """Never blocks the control loop: what a full buffer cannot take is dropped and counted."""
        try:
            written = os.write(self.fd, data)
        except (BlockingIOError, OSError):
            written = 0
        self.dropped_bytes += len(data) - written

    def close(self) -> None:
        if self.keep_open is not None:
            os.close(self.keep_open)
        if self.serial_port is not None:
            self.serial_port.close()
        else:
            os.close(self.fd)


def make_mav(signing_key: bytes | None = None) -> mavlink.MAVLink:
    mav = mavlink.MAVLink(None, srcSystem=PLANT_SYSTEM, srcComponent=PLANT_COMPONENT)
    if signing_key is not None:
        enable_signing(mav, signing_key)
    return mav


def serve(endpoint: SerialEndpoint, firmware: PlantProtocol, parser: FrameParser, should_stop) -> str:
    """The firmware's main loop; returns why it stopped.

    Input is taken before time is advanced: after a scheduling stall, commands already waiting in the
    port count as received before the watchdog looks at the clock.
    """
    while not should_stop():
        timeout = min(firmware.deadline(time.monotonic()), 0.5)
        ready, _, _ = select.select([endpoint.fd], [], [], timeout)
        if ready:
            data = endpoint.read()
            if data is None:
                return "host closed the port"
            now = time.monotonic()
            for msg in parser.feed(data):
                firmware.handle(msg, now)
        firmware.tick(time.monotonic())
    return "stopped by signal"


def open_applied_log(path: Path | None):
    """--applied-log opened for appending (None: not asked for); ValueError names the flag."""
    if path is None:
        return None
    try:
        return open(path, "a")
    except OSError as e:
        raise ValueError(f"--applied-log {path}: cannot open it ({e.strerror}): give a file path in a folder") from None


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m firmware_bridge.standin", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="a folder under models/ with <task>.xml")
    parser.add_argument("--models", type=Path, default=MODELS_DIR)
    parser.add_argument("--mode", choices=["lockstep", "realtime"], default="lockstep")
    parser.add_argument("--device", help="serve this serial device instead of a new pty")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--watchdog-periods", type=float, default=3.0, help="watchdog timeout in control periods")
    parser.add_argument("--signing-key-file", type=Path, help="32-byte MAVLink 2 signing key (raw or hex)")
    parser.add_argument("--control-period", type=float, help="override the XML's control period, s (benchmarks)")
    parser.add_argument(
        "--mass-scale",
        action="append",
        default=[],
        metavar="BODY=FACTOR",
        help="a body heavier or lighter than the MJCF (mass and inertia times FACTOR), e.g. pole=1.3; repeatable",
    )
    parser.add_argument(
        "--randomise",
        action="append",
        default=[],
        metavar="FIELD=LOW:HIGH",
        help="domain randomisation: each episode's plant draws this MjModel value from U[LOW, HIGH], e.g. "
        "body_mass[ball]=0.0087:0.87; repeatable",
    )
    parser.add_argument("--randomise-seed", type=int, default=0, help="the draws' seed (with each episode's id)")
    parser.add_argument(
        "--applied-log", type=Path, help="append every applied command here, a JSON line each (link tests)"
    )
    args = parser.parse_args(argv)
    try:
        low, high = CONTROL_PERIOD_LIMITS
        if args.control_period is not None and not low <= args.control_period <= high:
            raise ValueError(f"--control-period {args.control_period!r}: use seconds from {low:g} to {high:g}")
        if args.randomise_seed < 0:
            raise ValueError(f"--randomise-seed {args.randomise_seed}: use 0 or more")
        if args.baud < 1:
            raise ValueError(f"--baud {args.baud}: use 1 or more (bits per second of --device)")
        plant = MujocoPlant(model_xml(args.task, args.models), args.control_period, parse_mass_scale(args.mass_scale))
        if args.randomise:
            if args.mass_scale:
                raise ValueError("--randomise and --mass-scale: give one of them (both change the plant's masses)")
            plant.randomise(parse_randomise(args.randomise), args.randomise_seed)
        if plant.state_dim > MAX_STATE or plant.model.nu > MAX_ACT or len(args.task) > 16:
            raise ValueError(
                f"task {args.task!r} does not fit the dialect (its state has {plant.state_dim} values, at most "
                f"{MAX_STATE} fit one frame; commands <= {MAX_ACT}, name <= 16 characters): widen mpq.xml and "
                "bump MPQ_DIALECT_VERSION"
            )
        try:
            key = read_signing_key(args.signing_key_file) if args.signing_key_file else None
        except OSError as e:
            raise ValueError(
                f"--signing-key-file {args.signing_key_file}: {e.strerror}: give the file of the key"
            ) from None
        applied_log = open_applied_log(args.applied_log)  # open for the whole run
        if args.device:
            endpoint, port = SerialEndpoint.device(args.device, args.baud), args.device
        else:
            endpoint, port = SerialEndpoint.pty()
        mav = make_mav(key)
        mav.file = endpoint
        firmware = PlantProtocol(plant, args.task, args.mode, mav.send, args.watchdog_periods)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    frames = FrameParser(make_mav(key))
    firmware.link_counters = frames.counters
    if applied_log is not None:
        firmware.on_apply = lambda seq, u: applied_log.write(json.dumps(dict(seq=seq, u=u)) + "\n")
    stop = {"now": False}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(now=True))
    print(json.dumps({"port": port, "task": args.task, "mode": args.mode, "pid": os.getpid()}), flush=True)
    try:
        reason = serve(endpoint, firmware, frames, lambda: stop["now"])
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # already stopping: a late signal must not cut it short
            signal.signal(sig, signal.SIG_IGN)
        firmware.safe()
        endpoint.close()
        if applied_log is not None:
            applied_log.close()
    report = {
        "stopped": reason,
        **firmware.counts,
        **frames.counters.to_dict(),
        "dropped_bytes": endpoint.dropped_bytes,
    }
    print(json.dumps(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
