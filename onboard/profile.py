"""Robot profiles: `robots/<name>.toml`, what the onboard runtime needs to know about one robot."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from firmware_bridge.dialect import CONTROL_PERIOD_LIMITS
from firmware_bridge.frames import read_signing_key
from firmware_bridge.paths import FOLDER_NAME
from onboard.backends import BACKEND_NAMES
from onboard.mppi import MPPIConfig
from onboard.tasks import TASKS, get_task

ROOT = Path(__file__).resolve().parents[1]
ROBOTS_DIR = ROOT / "robots"


class ProfileError(ValueError):
    """A robot profile that cannot be used; the message names the file, the problem and the fix."""


@dataclass
class StandinSettings:
    """[standin]: the firmware stand-in a profile with serial = "standin" starts (a real plant is what it is)."""

    mass_scale: dict = field(default_factory=dict)  # {body: factor}: bodies heavier than the MJCF (mass and inertia)
    period: float = 0.0  # override the model's control period, s (0: the XML's)
    randomise: bool = False  # each episode's plant drawn from the task's bias, seeded by (seed, episode)


@dataclass
class DeploySettings:
    """[deploy]: how the workstation reaches the robot over ssh (offboard/deploy.py) and sets it up; workstation
    paths are relative to the repository root. The robot's own run never reads them."""

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


SECTIONS = {"standin": StandinSettings, "deploy": DeploySettings}


@dataclass
class RobotProfile:
    """What the onboard loop needs at the top level, the stand-in's and deploy's settings in their sections."""

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
    episodes: int = 0  # the deployed service: episodes per start (0: until stopped)
    mppi: dict = field(default_factory=dict)
    standin: StandinSettings = field(default_factory=StandinSettings)
    deploy: DeploySettings = field(default_factory=DeploySettings)
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
    if "/" in robot:  # a path, but not to a TOML file (a folder, a name without .toml)
        raise ProfileError(f"robot {robot!r}: give a robot's name (robots/<name>.toml) or the path of its .toml file")
    return ROBOTS_DIR / f"{robot}.toml"


def check_settings(path: Path, data: dict, cls, where: str, exclude=()) -> None:
    """Refuse a setting `cls` does not have, or one of the wrong kind, in one line naming it and the fix."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in exclude}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ProfileError(f"{path}: unknown setting(s) {where}{', '.join(unknown)}: check the spelling")
    for key, value in data.items():
        default = fields[key].default
        expected = {"mppi": dict, "mass_scale": dict, "cpus": list}.get(key) or (
            str if default is dataclasses.MISSING else type(default)
        )
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = data[key] = float(value)
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            kind = {
                int: "a whole number",
                float: "a number",
                str: "a string",
                bool: "true or false",
                dict: "a table",
            }.get(expected, f"a {expected.__name__}")
            raise ProfileError(f"{path}: {where}{key} = {value!r} should be {kind}")


def load_profile(robot: str, **overrides) -> RobotProfile:
    """robots/<robot>.toml (or a path), with `overrides` over its settings (a section's: a dict merged into it)."""
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
    for key, value in overrides.items():  # a section's overrides join the file's section
        if value is not None:
            data[key] = {**data.get(key, {}), **value} if key in SECTIONS and isinstance(value, dict) else value
    sections = {}
    for section, cls in SECTIONS.items():
        values = data.pop(section, {})
        if not isinstance(values, dict):
            raise ProfileError(f"{path}: {section} = {values!r} should be a [{section}] table")
        check_settings(path, values, cls, f"[{section}] ")
        sections[section] = cls(**values)
    moved = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    moved |= {f"standin_{name}": "standin" for name in ("mass_scale", "period", "randomise")}
    misplaced = sorted(set(data) & set(moved))
    if misplaced:
        raise ProfileError(
            f"{path}: {', '.join(misplaced)} belong(s) in a section: move them under "
            + " and ".join(sorted({f"[{moved[k]}]" for k in misplaced}))
            + " (standin_mass_scale is [standin] mass_scale, and so on)"
        )
    if "task" not in data:
        raise ProfileError(f'{path}: no task: add task = "pendulum" (or one of {", ".join(sorted(TASKS))})')
    check_settings(path, data, RobotProfile, "", exclude=("root", "source", *SECTIONS))
    folder = path.resolve().parent  # robots/ in the repository or in a release: paths start one level up
    root = folder.parent if folder.name == "robots" else ROOT
    profile = RobotProfile(**data, **sections, root=root, source=path)
    if profile.task not in TASKS:
        raise ProfileError(f"{path}: unknown task {profile.task!r}: known tasks are {', '.join(sorted(TASKS))}")
    p, standin = profile, profile.standin
    low, high = CONTROL_PERIOD_LIMITS
    stand_in = p.serial == "standin"

    def one_of(*allowed) -> tuple[str, object]:
        return f"use {' or '.join(map(repr, allowed))}", lambda value: value in allowed

    # (the setting's section, "" for the top level; the setting; what to use instead; the rule its value meets)
    for section, key, fix, ok in [
        ("", "mode", *one_of("lockstep", "realtime")),
        ("", "backend", *one_of(*BACKEND_NAMES)),
        ("", "starts", *one_of("uniform", "hanging")),
        ("deploy", "service", *one_of("auto", "systemd", "supervisor")),
        ("deploy", "gpu_extra", *one_of("gpu", "gpu-cuda12")),
        ("", "name", "use letters, digits, '.', '_' or '-' (it names the log folder)", FOLDER_NAME.fullmatch),
        ("", "log_dir", "give the folder for the segments", bool),
        ("", "threads", "use 1 or more", lambda v: v >= 1),
        ("", "cpus", "give CPU numbers, e.g. [2, 3] (empty: all)", lambda v: all(type(c) is int and c >= 0 for c in v)),
        ("", "baud", "use the port's baud rate, e.g. 115200", lambda v: v >= 1),
        ("", "deadline_misses_max", "use 1 or more", lambda v: v >= 1),
        ("", "command_copies", "use 1-4 (copies of each realtime command)", lambda v: 1 <= v <= 4),
        ("", "realtime_priority", "use 1-99 (SCHED_FIFO) or 0 (normal scheduling)", lambda v: 0 <= v <= 99),
        ("", "seed", "use 0 or more", lambda v: v >= 0),
        ("", "episodes", "use 0 (until stopped) or a positive count", lambda v: v >= 0),
        (
            "standin",
            "mass_scale",
            'only with serial = "standin": a real plant weighs what it weighs (clear it)',
            lambda v: not v or stand_in,
        ),
        (
            "standin",
            "randomise",
            'only with serial = "standin": a real plant is what it is (set it to false)',
            lambda v: not v or stand_in,
        ),
        (
            "standin",
            "randomise",
            "or mass_scale, not both: each sets the plant's masses",
            lambda v: not (v and standin.mass_scale),
        ),
        (
            "standin",
            "period",
            f"use 0 (the model's) or seconds from {low:g} to {high:g}",
            lambda v: v == 0 or low <= v <= high,
        ),
    ]:
        value = getattr(getattr(p, section) if section else p, key)
        if not ok(value):
            where = f"[{section}] " if section else ""
            raise ProfileError(f"{path}: {where}{key} = {value!r}: {fix}")
    task = get_task(profile.task)  # the task's own problems (its module, its MJCF) as they are
    if standin.mass_scale:
        try:
            task = get_task(profile.task, standin.mass_scale)
        except ValueError as e:
            raise ProfileError(f"{path}: [standin] mass_scale: {e}") from None
    if standin.randomise and task.derived_fields:
        raise ProfileError(
            f"{path}: [standin] randomise = true: task {task.name} derives {', '.join(task.derived_fields)} from its "
            "parameters in Python, which the stand-in cannot do: randomise a task without derived fields"
        )
    MPPIConfig.for_task(task)  # the task's own settings, as they are
    if profile.mppi:
        try:
            MPPIConfig.for_task(task, **profile.mppi)
        except ValueError as e:
            raise ProfileError(f"{path}: [mppi] {e}") from None
    return profile
