"""Releases on the robot: staged beside the running one, switched in one atomic step, rolled back by history.

    <remote_dir>/
      releases/<id>.partial/  a release being staged: `current` does not move until it passed every check
      releases/<id>/          onboard/, firmware_bridge/, models/<task>/, robots/<robot>.toml, RELEASE.json
      current -> releases/<id>
      HISTORY                 activated release ids, oldest first; rollback walks back along it
      venvs/<hash>/           the onboard dependencies, one venv per set of requirements (shared by releases)
      data/<robot>/           the segments: outside the releases, so deploys and rollbacks never touch them
      run/                    the service's spec, pidfile, state and log

`deploy` (offboard/deploy.py) rsyncs a release into `releases/<id>.partial/` and runs here:

    <python> -m onboard.release stage <remote_dir> <id>     # files vs RELEASE.json, venv, selfcheck --offline
    <venv>/bin/python -m onboard.release activate <remote_dir> <id>
    <venv>/bin/python -m onboard.release rollback <remote_dir>
    python3 -m onboard.release status <remote_dir>

Standard library only: `stage` runs before the venv exists. Activation ignores SIGHUP, so a dropped ssh
session cannot stop it halfway: it ends with the new release running or the previous one back.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from onboard.fileio import sha256_file, write_atomic
from onboard.service import ServiceError, ServiceSpec, get_service, wait_healthy

RELEASE_FILE = "RELEASE.json"
REQUIREMENTS = "requirements.txt"
KEEP_RELEASES = 5  # activated releases kept for rollback (the current one always)
PARTIAL = ".partial"


class ReleaseError(RuntimeError):
    """A release that cannot be staged, activated or rolled back; the message names the problem and the fix."""


def print_to_deployer(line: str) -> None:
    """Print for the deploying workstation; a dropped ssh session must not stop the work."""
    try:
        print(line, flush=True)
    except OSError:
        pass


def code_version() -> str:
    """This code's version: `git describe` where it is a checkout, else the installed package's."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=Path(__file__).parent
        )
        if out.returncode == 0:
            return out.stdout.strip()
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mpq")
    except PackageNotFoundError:
        return "unknown"


def read_release(release_dir: Path) -> dict:
    try:
        return json.loads((release_dir / RELEASE_FILE).read_text())
    except FileNotFoundError:
        raise ReleaseError(f"{release_dir} has no {RELEASE_FILE}: not a release; deploy again") from None


def verify_files(release_dir: Path) -> list[str]:
    """One line per file that is missing, changed or not listed in RELEASE.json."""
    listed = read_release(release_dir)["files"]
    problems = []
    for name, sha in sorted(listed.items()):
        path = release_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != sha:
            problems.append(f"{name}: sha256 does not match {RELEASE_FILE}")
    for path in sorted(release_dir.rglob("*")):
        name = path.relative_to(release_dir).as_posix()
        if path.is_file() and name != RELEASE_FILE and name not in listed and "__pycache__" not in path.parts:
            problems.append(f"{name}: not part of the release")
    return problems


def venv_path(remote_dir: Path, release_dir: Path) -> Path:
    """One venv per (requirements, python): a new set of requirements never touches the running release's."""
    python = f"{sys.version_info[0]}.{sys.version_info[1]} {platform.machine()}"  # a patch upgrade keeps the venvs
    key = hashlib.sha256(((release_dir / REQUIREMENTS).read_text() + python).encode()).hexdigest()[:12]
    base = Path(read_release(release_dir).get("venv_dir") or "venvs").expanduser()
    return (base if base.is_absolute() else remote_dir / base) / key


def ensure_venv(venv: Path, requirements: Path) -> None:
    """Create the venv and install the requirements once; a half-built venv (no marker) is built again.
    Robots that share a venv folder on one computer (`venv_dir`) build a given venv one at a time."""
    marker = venv / ".mpq-complete"
    if marker.exists():
        return
    venv.parent.mkdir(parents=True, exist_ok=True)
    with locked(venv.parent, f".{venv.name}.lock"):
        if marker.exists():  # another robot's deploy built it while this one waited
            return
        if venv.exists():
            shutil.rmtree(venv)
        print_to_deployer(f"creating {venv} (the onboard dependencies)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        out = subprocess.run([*pip, "-r", str(requirements)], capture_output=True, text=True)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise ReleaseError(f"pip could not install the onboard dependencies into {venv}: {last}")
        marker.write_text(requirements.read_text())


@contextmanager
def locked(folder: Path, name: str = ".deploy.lock"):
    """Run the block holding folder/name's lock: one deploy, activation or rollback at a time on a robot."""
    with open(folder / name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def stage(remote_dir: Path, release_id: str) -> None:
    """Check a release rsynced into releases/<id>.partial, then give it its final name."""
    staged = remote_dir / "releases" / (release_id + PARTIAL)
    with locked(remote_dir):
        problems = verify_files(staged)
        if problems:
            raise ReleaseError(f"release {release_id} arrived damaged ({problems[0]}, {len(problems)} problem(s))")
        release = read_release(staged)
        print_to_deployer(f"files: {len(release['files'])} verified against {RELEASE_FILE}")
        venv = venv_path(remote_dir, staged)
        ensure_venv(venv, staged / REQUIREMENTS)
        check = subprocess.run(
            [
                str(venv / "bin/python"),
                "-m",
                "onboard",
                "selfcheck",
                "--robot",
                f"robots/{release['robot']}.toml",
                "--offline",
            ],
            cwd=staged,
            capture_output=True,
            text=True,
        )
        for line in check.stdout.splitlines():
            print_to_deployer(f"selfcheck: {line}")
        if check.returncode != 0:
            raise ReleaseError(f"selfcheck of release {release_id} failed: {check.stderr.strip() or 'no output'}")
        os.replace(staged, remote_dir / "releases" / release_id)
    print_to_deployer(f"staged {release_id}")


def current_release(remote_dir: Path) -> str | None:
    link = remote_dir / "current"
    return Path(os.readlink(link)).name if link.is_symlink() else None


def read_history(remote_dir: Path) -> list[str]:
    path = remote_dir / "HISTORY"
    return path.read_text().split() if path.exists() else []


def service_for(remote_dir: Path, release_id: str):
    release_dir = remote_dir / "releases" / release_id
    release = read_release(release_dir)
    python = venv_path(remote_dir, release_dir) / "bin/python"
    command = [
        str(python),
        "-m",
        "onboard",
        "run",
        "--robot",
        f"robots/{release['robot']}.toml",
        "--episodes",
        str(release["episodes"]),
    ]
    spec = ServiceSpec(release["robot"], command, str(remote_dir), release["service"])
    return spec, get_service(spec)


def _switch(remote_dir: Path, release_id: str) -> None:
    """`current` -> releases/<id> in one rename: readers see the old release or the new one, never neither."""
    tmp = remote_dir / "current.new"
    tmp.unlink(missing_ok=True)
    os.symlink(Path("releases") / release_id, tmp)
    os.replace(tmp, remote_dir / "current")


def _start(service) -> tuple[bool, str]:
    """(healthy, status line) of a start watched for 3 s; a service that cannot start is unhealthy."""
    try:
        service.start()
        status = wait_healthy(service, settle=3.0)
    except (ServiceError, OSError) as e:
        return False, str(e)
    return not status.failed, status.line


def _run_release(remote_dir: Path, release_id: str, previous: str | None) -> str:
    """Stop the running release, switch to `release_id`, start it; back to `previous` when it fails."""
    spec, service = service_for(remote_dir, release_id)  # a service this robot cannot run: refused before any stop
    if previous is not None:
        previous_spec, previous_service = service_for(remote_dir, previous)
        previous_service.stop()
    _switch(remote_dir, release_id)
    spec.save()
    healthy, line = _start(service)
    if healthy:
        return line
    log_file = spec.log_file
    lines = [x for x in log_file.read_text(errors="replace").splitlines() if x.strip()] if log_file.exists() else []
    log_tail = f"; last log line: {lines[-1]}" if lines else ""
    try:
        service.stop()
    except (ServiceError, OSError):
        pass
    if previous is None:
        (remote_dir / "current").unlink(missing_ok=True)  # nothing to go back to: no current, not a broken one
        back = "nothing running"
    else:
        _switch(remote_dir, previous)
        previous_spec.save()
        back_ok, back_line = _start(previous_service)
        back = f"back on {previous}" + ("" if back_ok else f", which did not start either ({back_line})")
    raise ReleaseError(f"release {release_id} failed to start ({line}{log_tail}): {back}")


def activate(remote_dir: Path, release_id: str) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with locked(remote_dir):
        if not (remote_dir / "releases" / release_id).is_dir():
            raise ReleaseError(f"no staged release {release_id} under {remote_dir}/releases: deploy again")
        previous = current_release(remote_dir)
        line = _run_release(remote_dir, release_id, previous)
        history = [r for r in read_history(remote_dir) if r != release_id] + [release_id]
        write_atomic(remote_dir / "HISTORY", "\n".join(history) + "\n")
        prune_releases(remote_dir, history)
    print_to_deployer(f"release {release_id} is current; service {line}")


def rollback(remote_dir: Path) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with locked(remote_dir):
        current = current_release(remote_dir)
        history = [r for r in read_history(remote_dir) if (remote_dir / "releases" / r).is_dir()]
        if current in history:
            history = history[: history.index(current)]
        if not history:
            raise ReleaseError(f"no release before {current} is kept on the robot: deploy the one you want instead")
        target = history[-1]
        target_dir = remote_dir / "releases" / target
        ensure_venv(venv_path(remote_dir, target_dir), target_dir / REQUIREMENTS)  # if it was removed
        line = _run_release(remote_dir, target, current)
        write_atomic(remote_dir / "HISTORY", "\n".join(history) + "\n")
    print_to_deployer(f"rolled back from {current} to {target}; service {line}")


def prune_releases(remote_dir: Path, history: list[str]) -> None:
    """Keep the newest KEEP_RELEASES activated releases; remove older ones and their unused venvs."""
    keep = set(history[-KEEP_RELEASES:]) | {current_release(remote_dir)}
    releases = remote_dir / "releases"
    for folder in sorted(releases.iterdir()):
        if folder.is_dir() and not folder.name.endswith(PARTIAL) and folder.name not in keep:
            shutil.rmtree(folder)
            print_to_deployer(f"removed old release {folder.name}")
    used = {venv_path(remote_dir, releases / r) for r in keep if (releases / r).is_dir()}
    venvs = remote_dir / "venvs"
    for venv in sorted(venvs.iterdir()) if venvs.is_dir() else []:
        if venv.is_dir() and venv not in used:  # beside the venvs: their build locks (files), left alone
            shutil.rmtree(venv)
            print_to_deployer(f"removed unused venv {venv.name}")


def status(remote_dir: Path) -> dict:
    current = current_release(remote_dir)
    report = dict(remote_dir=str(remote_dir), current=current, history=read_history(remote_dir), service=None)
    if current is not None:
        report["service"] = service_for(remote_dir, current)[1].status().line
        report["model_sha256"] = read_release(remote_dir / "releases" / current).get("model_sha256")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onboard.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("stage", "activate", "rollback", "status"))
    parser.add_argument("remote_dir", type=Path)
    parser.add_argument("release_id", nargs="?")
    args = parser.parse_args(argv)
    remote_dir = args.remote_dir.expanduser().resolve()
    try:
        if args.action in ("stage", "activate") and not args.release_id:
            raise ReleaseError(f"{args.action} needs a release id")
        if args.action == "stage":
            stage(remote_dir, args.release_id)
        elif args.action == "activate":
            activate(remote_dir, args.release_id)
        elif args.action == "rollback":
            rollback(remote_dir)
        else:
            print_to_deployer(json.dumps(status(remote_dir)))
    except (ReleaseError, ServiceError, OSError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
