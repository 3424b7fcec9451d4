"""Robot profiles: `robots/<name>.toml`, what the onboard runtime needs to know about one robot."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from firmware_bridge.dialect import CONTROL_PERIOD_LIMITS
from firmware_bridge.frames import read_signing_key
from onboard.mppi import MPPIConfig
from onboard.tasks import TASKS, get_task

ROOT = Path(__file__).resolve().parents[1]
ROBOTS_DIR = ROOT / "robots"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a robot's name is a folder name: no paths


class ProfileError(ValueError):
    """A robot profile that cannot be used; the message names the file, the problem and the fix."""


@dataclass
class RobotProfile:
    name: str
    task: str
    serial: str = "standin"
    baud: int = 115200
    backend: str = "c"
    mode: str = "lockstep"
    model: str = ""
    log_dir: str = "data"
    signing_key_file: str = ""
    threads: int = 1
    cpus: list = field(default_factory=list)  # the CPUs the loop and every thread it starts run on (empty: all)
    deadline_misses_max: int = 5
    command_copies: int = 2  # realtime: each command sent this many times (the plant applies one), for lossy links
    # Realtime: when the plant's watchdog latched because commands were lost on the wire, re-arm and go on (the
    # steps at zero actuation are recorded as such); false: stop the run, as for every other failsafe.
    rearm_after_watchdog: bool = False
    realtime_priority: int = 50  # realtime mode: the loop's SCHED_FIFO priority, 1-99 (0: normal scheduling)
    seed: int = 0  # episode starts: drawn from the task's start box seeded by (seed, episode id)
    starts: str = "uniform"  # episode starts: "uniform" over the task's start box, or "hanging" (its fixed start)
    standin_mass_scale: dict = field(default_factory=dict)  # stand-in only: {body: factor}, a plant off its MJCF
    standin_period: float = 0.0  # stand-in only: override the model's control period, s (0: the XML's)
    # stand-in only: domain randomisation, each episode's plant drawn from the task's bias (seeded by (seed, episode))
    standin_randomise: bool = False
    episodes: int = 0  # the deployed service: episodes per start (0: until stopped)
    mppi: dict = field(default_factory=dict)
    # Deploy over ssh (offboard/deploy.py); workstation paths are relative to the repository root.
    host: str = ""  # empty: not deployable (runs here)
    user: str = ""  # empty: your user name
    ssh_port: int = 22
    identity_file: str = ""  # the private key ssh logs in with (key authentication only)
    known_hosts_file: str = ""  # empty: ~/.ssh/known_hosts
    remote_dir: str = "mpq"  # on the robot; relative to the login's home folder
    python: str = "python3"  # on the robot: creates the venv
    venv_dir: str = ""  # on the robot: one venv per set of requirements in it; empty: <remote_dir>/venvs
    pip_extra_index_url: str = ""  # an extra package index for the robot's venv (JetPack's CUDA wheels)
    gpu_extra: str = "gpu"  # backend cupy: the pip extra deploy installs: gpu (CUDA 13) or gpu-cuda12 (JetPack 6)
    service: str = "auto"  # auto (systemd where it runs, else the pidfile supervisor) | systemd | supervisor
    root: Path = ROOT  # relative paths are resolved against this
    source: Path | None = None  # the file it was read from (messages name it)

    def path(self, value: str) -> Path | None:
        """A profile path, resolved against the root; None when empty."""
        if not value:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def model_path(self) -> Path | None:
        return self.path(self.model)

    @property
    def log_path(self) -> Path:
        return self.path(self.log_dir)

    def signing_key(self) -> bytes | None:
        path = self.path(self.signing_key_file)
        if path is None:
            return None
        try:
            return read_signing_key(path)
        except OSError as e:
            raise ProfileError(f"signing key file {path}: {e.strerror}: create it or clear signing_key_file") from None


def profile_file(robot: str) -> Path:
    """A robot name (robots/<name>.toml) or a path to a TOML file."""
    path = Path(robot)
    if path.suffix == ".toml":
        return path
    return ROBOTS_DIR / f"{robot}.toml"


def load_profile(robot: str, **overrides) -> RobotProfile:
    path = profile_file(robot)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in ROBOTS_DIR.glob("*.toml")))
        raise ProfileError(f"no robot profile {path}: known robots are {known}") from None
    except OSError as e:
        raise ProfileError(f"cannot read robot profile {path} ({e.strerror}): give a readable TOML file") from None
    except UnicodeDecodeError:
        raise ProfileError(f"{path} is not UTF-8 text: save the profile as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path} is not valid TOML ({e}): fix the file") from None
    data.setdefault("name", path.stem)
    data.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(RobotProfile)}
    unknown = sorted(set(data) - set(fields) | set(data) & {"root", "source"})
    if unknown:
        raise ProfileError(f"{path}: unknown setting(s) {', '.join(unknown)}: check the spelling")
    if "task" not in data:
        raise ProfileError(f'{path}: no task: add task = "pendulum" (or one of {", ".join(sorted(TASKS))})')
    for key, value in data.items():
        default = fields[key].default
        expected = {"mppi": dict, "standin_mass_scale": dict, "cpus": list}.get(key) or (
            str if default is dataclasses.MISSING else type(default)
        )
        if expected is float and isinstance(value, int):
            value = data[key] = float(value)
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            raise ProfileError(f"{path}: {key} = {value!r} should be a {expected.__name__}")
    folder = path.resolve().parent  # robots/ in the repository or in a release: paths start one level up
    profile = RobotProfile(**data, root=folder.parent if folder.name == "robots" else ROOT, source=path)
    if profile.task not in TASKS:
        raise ProfileError(f"{path}: unknown task {profile.task!r}: known tasks are {', '.join(sorted(TASKS))}")
    choices = dict(
        mode=("lockstep", "realtime"),
        starts=("uniform", "hanging"),
        service=("auto", "systemd", "supervisor"),
        gpu_extra=("gpu", "gpu-cuda12"),
    )
    for key, allowed in choices.items():
        if getattr(profile, key) not in allowed:
            raise ProfileError(f"{path}: {key} = {getattr(profile, key)!r}: use {' or '.join(map(repr, allowed))}")
    low, high = CONTROL_PERIOD_LIMITS
    for key, ok, fix in [
        ("name", NAME.fullmatch(profile.name), "use letters, digits, '.', '_' or '-' (it names the log folder)"),
        ("log_dir", profile.log_dir != "", "give the folder for the segments"),
        ("threads", profile.threads >= 1, "use 1 or more"),
        ("cpus", all(type(c) is int and c >= 0 for c in profile.cpus), "give CPU numbers, e.g. [2, 3] (empty: all)"),
        ("baud", profile.baud >= 1, "use the port's baud rate, e.g. 115200"),
        ("deadline_misses_max", profile.deadline_misses_max >= 1, "use 1 or more"),
        ("command_copies", 1 <= profile.command_copies <= 4, "use 1-4 (copies of each realtime command)"),
        ("realtime_priority", 0 <= profile.realtime_priority <= 99, "use 1-99 (SCHED_FIFO) or 0 (normal scheduling)"),
        ("seed", profile.seed >= 0, "use 0 or more"),
        ("episodes", profile.episodes >= 0, "use 0 (until stopped) or a positive count"),
        (
            "standin_mass_scale",
            not profile.standin_mass_scale or profile.serial == "standin",
            'only with serial = "standin": a real plant weighs what it weighs (clear it)',
        ),
        (
            "standin_randomise",
            not profile.standin_randomise or profile.serial == "standin",
            'only with serial = "standin": a real plant is what it is (set it to false)',
        ),
        (
            "standin_randomise",
            not (profile.standin_randomise and profile.standin_mass_scale),
            "or standin_mass_scale, not both: each sets the plant's masses",
        ),
        (
            "standin_period",
            profile.standin_period == 0 or low <= profile.standin_period <= high,
            f"use 0 (the model's) or seconds from {low:g} to {high:g}",
        ),
    ]:
        if not ok:
            raise ProfileError(f"{path}: {key} = {getattr(profile, key)!r}: {fix}")
    try:
        task = get_task(profile.task, profile.standin_mass_scale)
    except ValueError as e:
        raise ProfileError(f"{path}: standin_mass_scale: {e}") from None
    if profile.standin_randomise and task.derived_fields:
        raise ProfileError(
            f"{path}: standin_randomise = true: task {task.name} derives {', '.join(task.derived_fields)} from its "
            "parameters in Python, which the stand-in cannot do: randomise a task without derived fields"
        )
    try:
        MPPIConfig.for_task(task, **profile.mppi)
    except ValueError as e:
        raise ProfileError(f"{path}: [mppi] {e}") from None
    return profile
