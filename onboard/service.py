"""The robot's onboard runtime as a service: a systemd unit where systemd runs, else a pidfile supervisor.

Both behave the same way: start runs `python -m onboard run` in `<remote_dir>/current`, restarts it
when it fails (not when it exits 0), gives up after 5 failed starts in 60 s, and stop sends SIGTERM and
waits up to 30 s (the loop closes its open segment and disarms the plant) before SIGKILL. Standard
library only: it runs on a robot where nothing else may be installed yet.

    python -m onboard.service status|start|stop|restart --dir <remote_dir>
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from onboard.fileio import hold_lock, write_atomic

STOP_TIMEOUT = 30.0  # s from SIGTERM to SIGKILL: enough to close the open segment and disarm
RESTART_DELAY = 2.0  # s before a failed run is started again
START_LIMIT = (5, 60.0)  # this many failed starts within this many seconds: give up (failed)
SPEC_FILE = "service-spec.json"
LOG_KEEP_BYTES = 10 << 20  # the supervisor's log moves to .log.1 at a start once it is this big


@dataclass
class ServiceSpec:
    """What the service runs; written by release activation into `<remote_dir>/run/`."""

    robot: str
    command: list  # argv of the onboard runtime
    remote_dir: str
    kind: str = "auto"  # auto | systemd | supervisor
    stop_timeout: float = STOP_TIMEOUT

    def __post_init__(self):
        """A spec edited by hand is refused at load (as damaged), not half-used by the service."""
        kinds = dict(robot=str, remote_dir=str, kind=str, stop_timeout=(int, float))
        wrong = [name for name, kind in kinds.items() if not isinstance(getattr(self, name), kind)]
        if not isinstance(self.command, list) or not all(isinstance(arg, str) for arg in self.command):
            wrong.append("command")
        if wrong:
            raise TypeError(f"{', '.join(wrong)} of the wrong type")

    @property
    def name(self) -> str:
        return f"mpq-{self.robot}"

    @property
    def cwd(self) -> str:
        """<remote_dir>/current: resolved when the process starts, so a restart picks up a new release."""
        return str(Path(self.remote_dir) / "current")

    @property
    def run_dir(self) -> Path:
        """The supervisor's pidfile, state and log, and this spec."""
        return Path(self.remote_dir) / "run"

    @property
    def log_file(self) -> Path:
        """The runtime's output under the supervisor (systemd keeps it in the journal instead)."""
        return self.run_dir / f"{self.name}.log"

    def save(self) -> Path:
        path = self.run_dir / SPEC_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, remote_dir: Path) -> ServiceSpec:
        path = Path(remote_dir) / "run" / SPEC_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise ServiceError(f"no service installed under {remote_dir}: deploy a release first") from None
        except OSError as e:
            raise ServiceError(f"cannot read {path} ({e.strerror}): give the robot's remote_dir with --dir") from None
        except (ValueError, TypeError) as e:  # not JSON, or not the spec's keys
            raise ServiceError(f"{path} is damaged ({e}): deploy again to rewrite it") from None


class ServiceError(RuntimeError):
    """The service could not be started, stopped or read; the message says why."""


@dataclass
class ServiceStatus:
    running: bool
    failed: bool  # crashed, or gave up restarting
    pid: int | None
    line: str  # one line for the operator


def systemd_runs() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def get_service(spec: ServiceSpec) -> Supervisor | Systemd:
    kind = spec.kind
    if kind == "auto":
        kind = "systemd" if systemd_runs() else "supervisor"
    if kind == "systemd":
        if not systemd_runs():
            raise ServiceError('the profile asks for service = "systemd" but systemd does not run here: use "auto"')
        return Systemd(spec)
    return Supervisor(spec)


def _check_release(spec: ServiceSpec) -> None:
    if not Path(spec.cwd).is_dir():
        raise ServiceError(f"no current release in {spec.remote_dir}: deploy one (make deploy) before starting")


# --- the pidfile supervisor ----------------------------------------------------------------------
def _alive(pid: int, marker: str) -> bool:
    """A live (not zombie) process with this pid whose command line names `marker` (our supervisor's
    remote_dir): a pid the system reused for another process is not taken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and b"onboard.service" in cmdline and marker.encode() in cmdline


def _die_with_parent() -> None:
    """In the runtime: SIGTERM when the supervisor dies (Linux), so a killed supervisor never leaves a
    runtime holding the port; SIGTERM closes its segment and disarms the plant."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Supervisor:
    """systemd's Restart=on-failure for machines without systemd: one detached process per robot."""

    def __init__(self, spec: ServiceSpec):
        self.spec = spec
        self.run_dir = spec.run_dir  # pidfile, state and log
        self.pidfile = self.run_dir / f"{spec.name}.pid"
        self.statefile = self.run_dir / f"{spec.name}.json"
        self.logfile = spec.log_file

    def _state(self) -> dict:
        try:
            return json.loads(self.statefile.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def _pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid, self.spec.remote_dir) else None

    def status(self) -> ServiceStatus:
        pid, state = self._pid(), self._state()
        release = state.get("release", "?")
        if pid is not None:  # a run that exited non-zero under a live supervisor: crash-looping
            crashing = state.get("last_exit") not in (0, None)
            line = (
                f"running (supervisor pid {pid}, run pid {state.get('child_pid')}, release {release}, "
                f"{state.get('starts', 0)} start(s), last exit {state.get('last_exit')})"
            )
            return ServiceStatus(True, crashing, pid, line)
        if not state:
            return ServiceStatus(False, False, None, "not started")
        failed = state.get("state") == "failed" or state.get("last_exit") not in (0, None)
        return ServiceStatus(
            False,
            failed,
            None,
            f"{state.get('state', 'stopped')} (release {release}, last exit {state.get('last_exit')})",
        )

    def start(self) -> ServiceStatus:
        """Start the supervisor unless one runs; two starts at once take turns, so the second finds the first's."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "start.lock", "a") as turn:
            fcntl.flock(turn, fcntl.LOCK_EX)  # released when the file closes
            return self._start()

    def _start(self) -> ServiceStatus:
        current = self.status()
        if current.running:
            return current
        _check_release(self.spec)
        self.statefile.unlink(missing_ok=True)
        if self.logfile.exists() and self.logfile.stat().st_size > LOG_KEEP_BYTES:
            os.replace(self.logfile, self.logfile.with_name(self.logfile.name + ".1"))  # one old log kept
        with open(self.logfile, "ab") as log:
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "onboard.service", "supervise", "--dir", self.spec.remote_dir],
                cwd=self.spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the ssh session that started it
            )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self._state().get("starts") and self.pidfile.exists():
                return self.status()
            if supervisor.poll() is not None:
                if self._state().get("starts"):  # the run was that short and is over: status says how it ended
                    return self.status()
                raise ServiceError(f"the supervisor exited at once ({supervisor.returncode}): see {self.logfile}")
            time.sleep(0.05)
        raise ServiceError(f"the supervisor did not start the runtime within 10 s: see {self.logfile}")

    def stop(self) -> ServiceStatus:
        pid = self._pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:  # it ended on its own just now
                return self.status()
            deadline = time.monotonic() + self.spec.stop_timeout + 5.0
            while _alive(pid, self.spec.remote_dir):
                if time.monotonic() > deadline:
                    raise ServiceError(
                        f"the supervisor (pid {pid}) did not stop within {self.spec.stop_timeout + 5:.0f} s"
                    )
                time.sleep(0.05)
        return self.status()

    def restart(self) -> ServiceStatus:
        self.stop()
        return self.start()

    def supervise(self) -> int:
        """The supervisor process itself: run, restart on failure, forward SIGTERM, record its state."""
        stopping = {"at": None}
        child = None

        def on_signal(signum, frame):
            if stopping["at"] is None:
                stopping["at"] = time.monotonic()
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        lock = hold_lock(self.run_dir / "supervisor.lock")  # held while this supervisor lives
        if lock is None:  # two starts at once: the first one supervises, this one leaves
            _log("another supervisor already runs this service: this one exits")
            return 0
        write_atomic(self.pidfile, f"{os.getpid()}\n")
        state = dict(state="starting", starts=0, last_exit=None, release=_release(self.spec.cwd), child_pid=None)
        failures = deque()
        try:
            while stopping["at"] is None:
                _log(f"starting {' '.join(self.spec.command)} in {os.getcwd()}")
                child = subprocess.Popen(self.spec.command, cwd=self.spec.cwd, preexec_fn=_die_with_parent)
                if stopping["at"] is not None:  # SIGTERM came while it was being started
                    child.send_signal(signal.SIGTERM)
                state.update(state="running", starts=state["starts"] + 1, child_pid=child.pid)
                write_atomic(self.statefile, json.dumps(state))
                while True:
                    try:
                        code = child.wait(timeout=0.5)
                        break
                    except subprocess.TimeoutExpired:
                        if stopping["at"] is not None and time.monotonic() - stopping["at"] > self.spec.stop_timeout:
                            _log(f"the runtime did not stop within {self.spec.stop_timeout:g} s of SIGTERM: SIGKILL")
                            child.kill()
                state.update(last_exit=code, child_pid=None)
                _log(f"the runtime exited with {code}")
                if stopping["at"] is not None:
                    state["state"] = "stopped"
                    break
                if code == 0:
                    state["state"] = "exited"
                    break
                now = time.monotonic()
                failures.append(now)
                while failures and now - failures[0] > START_LIMIT[1]:
                    failures.popleft()
                if len(failures) >= START_LIMIT[0]:
                    state["state"] = "failed"
                    _log(f"{len(failures)} failed starts within {START_LIMIT[1]:.0f} s: giving up")
                    break
                state["state"] = "restarting"
                write_atomic(self.statefile, json.dumps(state))
                until = time.monotonic() + RESTART_DELAY
                while time.monotonic() < until and stopping["at"] is None:
                    time.sleep(0.1)
            if stopping["at"] is not None:
                state["state"] = "stopped"
        finally:
            write_atomic(self.statefile, json.dumps(state))
            self.pidfile.unlink(missing_ok=True)
        return 0


def _release(cwd: str) -> str:
    return Path(cwd).resolve().name


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} supervisor: {message}", flush=True)


# --- systemd -------------------------------------------------------------------------------------
class Systemd:
    """A unit in /etc/systemd/system (root) or the user's systemd (needs `loginctl enable-linger`)."""

    def __init__(self, spec: ServiceSpec):
        self.spec = spec
        self.user = os.geteuid() != 0
        folder = Path.home() / ".config/systemd/user" if self.user else Path("/etc/systemd/system")
        self.unit_path = folder / f"{spec.name}.service"

    def unit_text(self) -> str:
        return unit_text(self.spec, wanted_by="default.target" if self.user else "multi-user.target")

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess:
        argv = ["systemctl", *(["--user"] if self.user else []), *args]
        return subprocess.run(argv, capture_output=True, text=True)

    def _checked(self, *args: str) -> None:
        out = self._systemctl(*args)
        if out.returncode != 0:
            last = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise ServiceError(f"systemctl {' '.join(args)} failed: {last[0]}")

    def status(self) -> ServiceStatus:
        out = self._systemctl("show", self.unit_path.name, "-p", "ActiveState,SubState,MainPID,NRestarts,Result")
        props = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        active = props.get("ActiveState") == "active"
        pid = int(props.get("MainPID", "0") or 0) or None
        failed = props.get("ActiveState") == "failed" or props.get("Result", "success") != "success"
        line = (
            f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')}; {self.unit_path.name}, pid {pid}, "
            f"release {_release(self.spec.cwd)}, restarts {props.get('NRestarts', '?')}, result {props.get('Result')})"
        )
        return ServiceStatus(active, failed, pid, line)

    def start(self) -> ServiceStatus:
        _check_release(self.spec)
        self.unit_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.unit_path, self.unit_text())
        self._checked("daemon-reload")
        self._checked("enable", self.unit_path.name)
        self._checked("start", self.unit_path.name)
        return self.status()

    def stop(self) -> ServiceStatus:
        self._checked("stop", self.unit_path.name)
        return self.status()

    def restart(self) -> ServiceStatus:
        self.stop()
        return self.start()


def _systemd_quote(arg: str) -> str:
    """One ExecStart argument as systemd reads it: quoted, with its escapes and specifiers doubled."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def unit_text(spec: ServiceSpec, wanted_by: str = "multi-user.target") -> str:
    """The same behaviour as the supervisor's, in systemd's words."""
    return f"""[Unit]
Description=mpq onboard runtime for robot {spec.robot}
After=network-online.target
StartLimitIntervalSec={START_LIMIT[1]:.0f}
StartLimitBurst={START_LIMIT[0]}

[Service]
Type=simple
WorkingDirectory={spec.cwd.replace("%", "%%")}
ExecStart={" ".join(_systemd_quote(arg) for arg in spec.command)}
Restart=on-failure
RestartSec={RESTART_DELAY:.0f}
KillSignal=SIGTERM
TimeoutStopSec={spec.stop_timeout:g}
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy={wanted_by}
"""


def wait_healthy(service: Supervisor | Systemd, settle: float = 3.0) -> ServiceStatus:
    """Running `settle` seconds after a start without a failure, or finished with exit 0: healthy."""
    deadline = time.monotonic() + settle
    status = service.status()
    while time.monotonic() < deadline:
        if status.failed:
            break
        time.sleep(0.1)
        status = service.status()
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onboard.service", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("status", "start", "stop", "restart", "supervise"))
    parser.add_argument("--dir", type=Path, default=Path.cwd().parent.parent, help="the robot's remote_dir")
    args = parser.parse_args(argv)
    try:
        spec = ServiceSpec.load(args.dir)
        if args.action == "supervise":
            return Supervisor(spec).supervise()
        service = get_service(spec)
        status = getattr(service, args.action)()
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{spec.name}: {status.line}")
    return 0 if status.running or args.action == "stop" else 3


if __name__ == "__main__":
    sys.exit(main())
