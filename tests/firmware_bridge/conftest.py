"""Real stand-in processes on real ptys."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class StandIn:
    def __init__(self, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "firmware_bridge.standin", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"stand-in did not start: {self.process.stderr.read()}")
        self.info = json.loads(line)
        self.port = self.info["port"]

    def stop(self, grace: float = 0.0) -> tuple[int, dict]:
        """SIGTERM unless it exits by itself within `grace` seconds, then the exit code and its closing report."""
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=10)
        self.stderr_lines = report = self.process.stderr.read().strip().splitlines()
        return code, (json.loads(report[-1]) if report else {})


@pytest.fixture
def standin():
    started = []

    def start(*args: str) -> StandIn:
        s = StandIn(*args)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.process.poll() is None:
            s.process.kill()
            s.process.wait()
