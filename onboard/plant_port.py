"""The robot's plant as the loop reaches it: the profile's serial port, or a stand-in started here."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager

from firmware_bridge.link import Link
from onboard.errors import LoopError
from onboard.profile import RobotProfile
from onboard.tasks import get_task


@contextmanager
def open_plant(profile: RobotProfile, task, signing_key: bytes | None):
    """The profile's plant over a handshaken link (the stand-in started and stopped here where the profile asks
    for one); the link closed on the way out. `run` and `selfcheck` both reach the plant through this."""
    with PlantPort(profile) as url:
        link = Link(url, task.name, task.state_dim, task.act_dim, baud=profile.baud, signing_key=signing_key)
        try:
            link.handshake(control_period=task.dt)
            yield link
        finally:
            link.close()


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
        if p.standin.period:
            args += ["--control-period", str(p.standin.period)]
        for body, factor in p.standin.mass_scale.items():
            args += ["--mass-scale", f"{body}={factor!r}"]
        if p.standin.randomise:  # each episode's plant drawn from the task's bias, by (seed, episode)
            for address, low, high in get_task(p.task).bias_ranges:
                args += ["--randomise", f"{address}={low!r}:{high!r}"]
            args += ["--randomise-seed", str(p.seed)]
        log_dir = p.log_path / p.name
        log_dir.mkdir(parents=True, exist_ok=True)
        log_file = log_dir / "standin.log"
        with open(log_file, "a") as log:
            self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        try:  # a Ctrl-C while it starts: stopped here, as it is in its own session and never gets one
            line = self.process.stdout.readline()
        except BaseException:
            self.__exit__()
            raise
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
                self.process.wait()
        if self.process is not None:
            self.process.stdout.close()  # the pipe its port line came over
