"""A serial link with faults, for trying a host and a plant on a bad wire before trusting a robot to it.

`FaultProxy(plant_port, rate)` opens a new pty for the host and forwards bytes both ways to the plant's
port, and each byte meets a fault with probability `rate`: a flipped bit, a dropped byte, or a burst of
1-16 random bytes after it, in equal shares, from a seeded generator. It counts what it did per
direction, so tests and `make bench` can hold both ends' counters to it. Threads: one forwarding thread.
`python -m firmware_bridge.fault_proxy PORT --rate 0.01` prints the host's port as JSON and runs until
stopped.
"""

from __future__ import annotations

import json
import os
import select
import signal
import termios
import threading
import tty

import numpy as np

from firmware_bridge.cli import ArgumentParser

KINDS = ("flip", "drop", "burst")


class FaultProxy:
    def __init__(self, plant_port: str, rate: float, seed: int = 0):
        if not 0 <= rate < 1:
            raise ValueError("use a probability per byte in [0, 1)")
        self.rate = rate
        # One generator per direction: each direction's faults follow its own bytes, whatever the timing.
        self.rngs = dict(zip(("to_plant", "to_host"), np.random.default_rng(seed).spawn(2), strict=True))
        self.plant = os.open(plant_port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.plant)
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave = slave  # held open until the host opens its end, so early bytes are not lost
        os.set_blocking(self.master, False)
        names = ("to_plant", "to_host")
        self.counts = {d: dict(bytes=0, flip=0, drop=0, burst=0, garbage_bytes=0) for d in names}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._forward, daemon=True)
        self._thread.start()

    def inject(self, data: bytes, direction: str) -> bytes:
        """data with this direction's faults applied."""
        counts, rng = self.counts[direction], self.rngs[direction]
        counts["bytes"] += len(data)
        if self.rate == 0:
            return data
        hits = np.flatnonzero(rng.random(len(data)) < self.rate)
        if hits.size == 0:
            return data
        out, start = bytearray(), 0
        for i in hits:
            out += data[start:i]
            kind = KINDS[rng.integers(len(KINDS))]
            counts[kind] += 1
            if kind == "flip":
                out.append(data[i] ^ (1 << int(rng.integers(8))))
            elif kind == "burst":
                garbage = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
                counts["garbage_bytes"] += len(garbage)
                out += bytes([data[i]]) + garbage
            start = i + 1  # a drop: the byte is simply not copied
        return bytes(out + data[start:])

    def _forward(self) -> None:
        routes = {self.master: (self.plant, "to_plant"), self.plant: (self.master, "to_host")}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(routes), [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # an end went away (EIO on a pty whose other side closed)
                    if fd == self.master and self._slave is not None:
                        continue  # the host has not opened its end yet
                    return
                if fd == self.master and self._slave is not None:
                    os.close(self._slave)  # the host is here: its closing the port now reads as EIO
                    self._slave = None
                target, direction = routes[fd]
                self._write(target, self.inject(data, direction))

    @staticmethod
    def _write(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                select.select([], [fd], [], 0.05)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for fd in (self.master, self.plant, self._slave):
            if fd is not None:
                os.close(fd)
        self._slave = None

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m firmware_bridge.fault_proxy", description=__doc__.splitlines()[0])
    parser.add_argument("plant_port", help="the plant's serial port (a stand-in's pty, or a device)")
    parser.add_argument("--rate", type=float, default=0.001, help="faults per byte (0.001: 0.1 %%)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed {args.seed}: use 0 or more")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        proxy = FaultProxy(args.plant_port, args.rate, args.seed)
    except ValueError as e:  # the rate, checked before the port opens
        parser.error(f"--rate {args.rate}: {e}")
    except (OSError, termios.error) as e:
        why = e.strerror if isinstance(e, OSError) else e.args[-1]
        parser.exit(1, f"error: cannot open {args.plant_port}: {why}; give the plant's serial device or pty\n")
    with proxy:
        print(json.dumps({"port": proxy.port}), flush=True)
        stop.wait()
        print(json.dumps(proxy.counts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
