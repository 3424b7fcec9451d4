"""Robot profiles: `robots/<name>.toml`, what the onboard runtime needs to know about one robot."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from firmware_bridge.frames import read_signing_key
from onboard.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
ROBOTS_DIR = ROOT / "robots"


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
    deadline_misses_max: int = 5
    realtime_priority: int = 50  # realtime mode: the loop's SCHED_FIFO priority, 1-99 (0: normal scheduling)
    seed: int = 0
    standin_period: float = 0.0  # stand-in only: override the model's control period, s (0: the XML's)
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
    service: str = "auto"  # auto (systemd where it runs, else the pidfile supervisor) | systemd | supervisor
    root: Path = ROOT  # relative paths are resolved against this

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
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in ROBOTS_DIR.glob("*.toml")))
        raise ProfileError(f"no robot profile {path}: known robots are {known}") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path} is not valid TOML ({e}): fix the file") from None
    data.setdefault("name", path.stem)
    data.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(RobotProfile)}
    unknown = sorted(set(data) - set(fields) - {"root"})
    if unknown:
        raise ProfileError(f"{path}: unknown setting(s) {', '.join(unknown)}: check the spelling")
    if "task" not in data:
        raise ProfileError(f'{path}: no task: add task = "pendulum" (or one of {", ".join(sorted(TASKS))})')
    for key, value in data.items():
        default = fields[key].default
        expected = dict if key == "mppi" else (str if default is dataclasses.MISSING else type(default))
        if expected is float and isinstance(value, int):
            value = data[key] = float(value)
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ProfileError(f"{path}: {key} = {value!r} should be a {expected.__name__}")
    profile = RobotProfile(**data, root=path.resolve().parent.parent)
    if profile.task not in TASKS:
        raise ProfileError(f"{path}: unknown task {profile.task!r}: known tasks are {', '.join(sorted(TASKS))}")
    if profile.mode not in ("lockstep", "realtime"):
        raise ProfileError(f'{path}: mode = {profile.mode!r}: use "lockstep" or "realtime"')
    if profile.service not in ("auto", "systemd", "supervisor"):
        raise ProfileError(f'{path}: service = {profile.service!r}: use "auto", "systemd" or "supervisor"')
    if not 0 <= profile.realtime_priority <= 99:
        raise ProfileError(
            f"{path}: realtime_priority = {profile.realtime_priority}: use 1-99 (SCHED_FIFO) or 0 (normal scheduling)"
        )
    if profile.episodes < 0:
        raise ProfileError(f"{path}: episodes = {profile.episodes}: use 0 (until stopped) or a positive count")
    return profile
