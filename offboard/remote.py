"""The robot over ssh (key authentication only) and rsync: one multiplexed connection per deploy or pull,
its failures as one line an operator can act on, and the first contact that finds (or creates) the robot's
folders."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from onboard.profile import RobotProfile, profile_file
from onboard.signals import ctrl_c_ignored

CONNECT_TIMEOUT = 10  # s
STOP_TIMEOUT = 30  # s: how long an interrupted rsync may take to keep its partial file


class RemoteError(RuntimeError):
    """A deploy, rollback, status or pull that cannot go on; one line naming the problem and the fix."""


class RemoteSettingsError(RemoteError, ValueError):
    """A refusal of this side's input before anything connects (the profile's host, key or known hosts, a model,
    a command's options): bad input, exit 2, where a failure on the way or on the robot is exit 1."""


def stop_all(remotes: list[Remote]) -> None:
    """Ctrl-C in a command that runs several robots' transfers in worker threads (it reaches the main thread
    only): interrupt them all at once, then wait for each."""
    with ctrl_c_ignored():
        for remote in remotes:
            remote.interrupt()
        for remote in remotes:
            remote.wait_stopped()


# --- ssh -----------------------------------------------------------------------------------------
class Remote:
    """ssh and rsync to one robot, with its profile's key, port and known hosts; errors as one clear line."""

    def __init__(self, profile: RobotProfile):
        self.profile = profile
        self.host = profile.deploy.host
        self.port = profile.deploy.ssh_port
        self.user = profile.deploy.user or getpass.getuser()
        self.target = f"{self.user}@{self.host}"
        self.identity = profile.path(profile.deploy.identity_file)
        self.known_hosts = profile.path(profile.deploy.known_hosts_file) or Path("~/.ssh/known_hosts").expanduser()
        self.control_dir = ""
        self.stopped = False  # by `interrupt`: no command or rsync starts after it
        self._lock = threading.Lock()
        self._transfer: subprocess.Popen | None = None  # the rsync running now
        self._interrupted: subprocess.Popen | None = None  # the one `interrupt` stopped

    def __enter__(self) -> Remote:
        # One ssh connection for every command and rsync of this deploy or pull (ssh multiplexing).
        self.control_dir = tempfile.mkdtemp(prefix="mpq-ssh-")
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run([*self.ssh_args(), "-O", "exit", self.target], capture_output=True)
        shutil.rmtree(self.control_dir, ignore_errors=True)

    def ssh_args(self) -> list[str]:
        assert self.control_dir, "ssh and rsync run inside `with Remote(profile) as remote`"
        args = [
            "ssh",
            "-p",
            str(self.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f'UserKnownHostsFile="{self.known_hosts}"',
            "-o",
            f"ConnectTimeout={CONNECT_TIMEOUT}",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={self.control_dir}/%C",
            "-o",
            "ControlPersist=30",
        ]
        if self.identity is not None:
            args += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return args

    def run(self, command: str, echo: bool = False) -> str:
        """Run a shell command on the robot; its stdout, echoed line by line when asked. Raises RemoteError."""
        with self._lock:
            self._refuse_if_stopped()
            process = subprocess.Popen(
                [*self.ssh_args(), self.target, command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        lines = []
        for line in process.stdout:
            lines.append(line)
            if echo:
                print(f"  robot: {line.rstrip()}", flush=True)
        stderr = process.stderr.read()
        if process.wait() != 0:
            raise RemoteError(self.explain(process.returncode, stderr, what=command.split()[0]))
        return "".join(lines)

    def rsync(self, *args: str) -> list[str]:
        """rsync over this ssh; the names it transferred. It runs in a process group of its own: an operator's
        Ctrl-C reaches this program, which stops it (`stop_all`)."""
        argv = ["rsync", "-a", "--protect-args", "--out-format=%n", "-e", shlex.join(self.ssh_args()), *args]
        with self._lock:
            self._refuse_if_stopped()
            process = self._transfer = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
        try:
            stdout, stderr = process.communicate()
        except KeyboardInterrupt:  # in this thread (a deploy): stop it here, reading its pipes while it exits
            with ctrl_c_ignored():
                self.interrupt()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.communicate(timeout=STOP_TIMEOUT)
                self.wait_stopped()
            raise
        finally:
            self._transfer = None
        if process.returncode != 0:
            raise RemoteError(self.explain(process.returncode, stderr, what="rsync"))
        return [line for line in stdout.splitlines() if line and not line.endswith("/")]

    def interrupt(self) -> None:
        """From any thread: start nothing more, and send SIGINT to the rsync running now (not a kill: rsync's
        receiver, a process of its own, moves the cut file into the partial folder as it exits)."""
        with self._lock:
            self.stopped = True
            self._interrupted = self._transfer
        if self._interrupted is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._interrupted.pid, signal.SIGINT)

    def wait_stopped(self) -> None:
        """After `interrupt`: return once every process of the interrupted rsync is gone (its receiver outlives
        it by a moment), so the next pull finds the folder as this one left it; killed after STOP_TIMEOUT."""
        process = self._interrupted
        if process is None:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT)
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def _refuse_if_stopped(self) -> None:
        if self.stopped:
            raise RemoteError(f"{self.target}: interrupted; run the command again")

    def explain(self, code: int, stderr: str, what: str) -> str:
        """ssh's failure modes in words an operator can act on."""
        where = f"{self.host}:{self.port}"
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
            return (
                f"the host key of {where} does not match {self.known_hosts}: if the robot was reinstalled, remove "
                f"the old key (ssh-keygen -R '[{self.host}]:{self.port}' -f {self.known_hosts}) and connect once by "
                "hand to accept the new one; otherwise stop, someone may be impersonating the robot"
            )
        if "Host key verification failed" in stderr:
            return (
                f"{where} is not in {self.known_hosts}: connect once by hand (ssh -p {self.port} {self.target}) "
                "to check and accept the robot's host key"
            )
        if "Permission denied" in stderr:
            key = self.identity or "your default key"
            return (
                f"{self.target} refused the key {key}: install it on the robot "
                f"(ssh-copy-id -i {key}.pub -p {self.port} {self.target}) or fix identity_file"
            )
        for reason in ("Connection refused", "Connection timed out", "No route to host", "Could not resolve"):
            if reason in stderr:
                return f"cannot reach {where} ({reason.lower()}): check that the robot is on the network and runs sshd"
        lines = [line for line in stderr.strip().splitlines() if line.strip()] or [f"exit status {code}"]
        specific = [line for line in lines if line.startswith("rsync:")]  # rsync's own cause, not its summary
        return f"{what} on {self.target} failed: {(specific or lines)[-1].removeprefix('error: ')}"


def check_ssh_settings(profile: RobotProfile) -> None:
    """What can be checked here before connecting: the profile first (a profile without a host needs no ssh),
    then the tools, the key and the known hosts file."""
    if not profile.deploy.host:
        raise RemoteSettingsError(
            f"robot {profile.name!r} has no host in {profile.source or profile_file(profile.name)}: it runs here "
            "(make sim); set host (and user, identity_file) to deploy to it"
        )
    for tool in ("ssh", "rsync"):
        if shutil.which(tool) is None:
            raise RemoteError(f"{tool} is not installed on this workstation: apt-get install openssh-client rsync")
    if profile.deploy.identity_file and not profile.path(profile.deploy.identity_file).is_file():
        path, user = profile.path(profile.deploy.identity_file), profile.deploy.user or getpass.getuser()
        raise RemoteSettingsError(
            f"identity file {path} not found: create a key (ssh-keygen -t ed25519 -f {path}) and install it on the "
            f"robot (ssh-copy-id -i {path}.pub -p {profile.deploy.ssh_port} {user}@{profile.deploy.host})"
        )
    if profile.deploy.known_hosts_file and not profile.path(profile.deploy.known_hosts_file).is_file():
        raise RemoteSettingsError(
            f"known hosts file {profile.path(profile.deploy.known_hosts_file)} not found: create it (ssh-keyscan -p "
            f"{profile.deploy.ssh_port} {profile.deploy.host}, after checking the key) or clear known_hosts_file"
        )


PREPARE = """
import fcntl, json, os, shutil, sys
d = os.path.realpath(os.path.expanduser({dir!r}))
for sub in ("releases", "data"):
    os.makedirs(os.path.join(d, sub), exist_ok=True)
releases = os.path.join(d, "releases")
session = None
if {deploy}:  # one deploy at a time: held until the deploy closes this ssh session (or its connection drops)
    session = open(os.path.join(d, ".deploy-session.lock"), "w")
    try:
        fcntl.flock(session, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(json.dumps(dict(busy=True, dir=d)), flush=True)
        sys.exit(0)
stale = sorted(n for n in os.listdir(releases) if n.endswith(".partial")) if {deploy} else []
for name in stale:
    shutil.rmtree(os.path.join(releases, name))
current = os.path.join(d, "current")
print(json.dumps(dict(dir=d, current=os.path.basename(os.readlink(current)) if os.path.islink(current) else None,
                      releases=sorted(os.listdir(releases)), stale=stale, python=sys.version.split()[0])), flush=True)
if session is not None:
    sys.stdin.read()
"""


def prepare_command(remote: Remote, deploy: bool) -> str:
    script = PREPARE.format(dir=remote.profile.deploy.remote_dir, deploy=deploy)
    return f"{shlex.quote(remote.profile.deploy.python)} -c {shlex.quote(script)}"


def checked_info(remote: Remote, line: str) -> dict:
    info = json.loads(line)
    if info.get("busy"):
        raise RemoteError(
            f"another deploy to {remote.profile.name} is running ({info['dir']}): wait for it to finish, then deploy"
        )
    if tuple(int(v) for v in info["python"].split(".")[:2]) < (3, 10):
        raise RemoteError(
            f"{remote.profile.deploy.python} on {remote.host} is Python {info['python']}: mpq needs 3.10 or newer; "
            "install one and set python in the robot's profile"
        )
    return info


def prepare_remote(remote: Remote) -> dict:
    """The robot's absolute remote_dir and current release (creating its folders on a first contact)."""
    return checked_info(remote, remote.run(prepare_command(remote, deploy=False)).strip().splitlines()[-1])
