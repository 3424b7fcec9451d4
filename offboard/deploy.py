"""Models and code to the robot, logs back: ssh (key authentication only) and rsync.

deploy     preflight here (the model loads and fits the robot's task), build the release in a temporary
           folder with the sha256 of every file, rsync it into `<remote_dir>/releases/<id>.partial/`, then on
           the robot (onboard/release.py): verify the files, create or reuse the venv, selfcheck, and
           switch `current` atomically with a service restart. Anything that fails before the switch leaves
           the running release alone; a new release that fails to start puts the previous one back.
rollback   the release before the current one in the robot's HISTORY.
pull-data  closed segments and MANIFEST into `data/<robot>/` with rsync --partial (resumable,
           idempotent), then every sha256 verified: what fails is listed and kept out of training.
           With prune, segments verified here (and only those) are deleted on the robot.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from onboard.fileio import blocking_file, sha256_file, write_atomic
from onboard.profile import ROOT, RobotProfile, profile_file
from onboard.qfunction import ModelError, OnnxQ, manifest_path
from onboard.recorder import MANIFEST, SegmentError, read_manifest, split_torn_tail, verified_segments
from onboard.release import RELEASE_FILE, REQUIREMENTS, code_version
from onboard.tasks import get_task

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CODE_PACKAGES = ("onboard", "firmware_bridge")
CODE_SUFFIXES = {".py", ".c", ".cu", ".h", ".xml"}  # everything onboard and firmware_bridge run from
CONNECT_TIMEOUT = 10  # s


class DeployError(RuntimeError):
    """A deploy, rollback or pull that cannot go on; one line naming the problem and the fix."""


# --- ssh -----------------------------------------------------------------------------------------
class Remote:
    """ssh and rsync to one robot, with its profile's key, port and known hosts; errors as one clear line."""

    def __init__(self, profile: RobotProfile):
        self.profile = profile
        self.host = profile.host
        self.port = profile.ssh_port
        self.user = profile.user or getpass.getuser()
        self.target = f"{self.user}@{self.host}"
        self.identity = profile.path(profile.identity_file)
        self.known_hosts = profile.path(profile.known_hosts_file) or Path("~/.ssh/known_hosts").expanduser()
        # One ssh connection for every command and rsync of this deploy or pull (ssh multiplexing).
        self.control_dir = tempfile.mkdtemp(prefix="mpq-ssh-")

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run([*self.ssh_args(), "-O", "exit", self.target], capture_output=True)
        shutil.rmtree(self.control_dir, ignore_errors=True)

    def ssh_args(self) -> list[str]:
        args = ["ssh", "-p", str(self.port), "-o", "BatchMode=yes", "-o", "PreferredAuthentications=publickey",
                "-o", "StrictHostKeyChecking=yes", "-o", f'UserKnownHostsFile="{self.known_hosts}"',
                "-o", f"ConnectTimeout={CONNECT_TIMEOUT}", "-o", "ServerAliveInterval=5",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
                "-o", "ControlPersist=30"]  # fmt: skip
        if self.identity is not None:
            args += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return args

    def run(self, command: str, echo: bool = False) -> str:
        """Run a shell command on the robot; its stdout, echoed line by line when asked. Raises DeployError."""
        process = subprocess.Popen(
            [*self.ssh_args(), self.target, command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines = []
        for line in process.stdout:
            lines.append(line)
            if echo:
                print(f"  robot: {line.rstrip()}", flush=True)
        stderr = process.stderr.read()
        if process.wait() != 0:
            raise DeployError(self.explain(process.returncode, stderr, what=command.split()[0]))
        return "".join(lines)

    def rsync(self, *args: str) -> list[str]:
        """rsync over this ssh; the names it transferred."""
        argv = ["rsync", "-a", "--protect-args", "--out-format=%n", "-e", shlex.join(self.ssh_args()), *args]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = process.communicate()
        except KeyboardInterrupt:  # let rsync keep its partial file (a kill would lose it), then stop
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=30)
            raise
        if process.returncode != 0:
            raise DeployError(self.explain(process.returncode, stderr, what="rsync"))
        return [line for line in stdout.splitlines() if line and not line.endswith("/")]

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


# --- preflight -----------------------------------------------------------------------------------
def preflight(profile: RobotProfile, model: Path | None) -> OnnxQ | None:
    """Everything that can be checked here, before anything on the robot changes: the profile first (a
    profile without a host needs no ssh), then the tools."""
    if not profile.host:
        raise DeployError(
            f"robot {profile.name!r} has no host in {profile.source or profile_file(profile.name)}: it runs here "
            "(make sim); set host (and user, identity_file) to deploy to it"
        )
    for tool in ("ssh", "rsync"):
        if shutil.which(tool) is None:
            raise DeployError(f"{tool} is not installed on this workstation: apt-get install openssh-client rsync")
    if profile.identity_file and not profile.path(profile.identity_file).is_file():
        path, user = profile.path(profile.identity_file), profile.user or getpass.getuser()
        raise DeployError(
            f"identity file {path} not found: create a key (ssh-keygen -t ed25519 -f {path}) and install it on the "
            f"robot (ssh-copy-id -i {path}.pub -p {profile.ssh_port} {user}@{profile.host})"
        )
    if profile.known_hosts_file and not profile.path(profile.known_hosts_file).is_file():
        raise DeployError(
            f"known hosts file {profile.path(profile.known_hosts_file)} not found: create it (ssh-keyscan -p "
            f"{profile.ssh_port} {profile.host}, after checking the key) or clear known_hosts_file"
        )
    if model is None:
        return None
    try:
        return OnnxQ(model, get_task(profile.task), threads=1)
    except ModelError as e:
        raise DeployError(f"refusing to deploy to {profile.name}: {e}") from None


# --- the release -----------------------------------------------------------------------------------
def requirements(profile: RobotProfile) -> str:
    """The robot's pip requirements: the onboard extra, sim when it runs a stand-in, warp for the warp backend,
    and the profile's gpu extra for cupy and warp (gpu: CUDA 13 from PyPI; gpu-cuda12: JetPack 6,
    onnxruntime-gpu from pip_extra_index_url)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu = [profile.gpu_extra] if profile.backend in ("cupy", "warp") else []
    warp = ["warp"] if profile.backend == "warp" else []
    extras = ["onboard"] + (["sim"] if profile.serial == "standin" else []) + warp + gpu
    lines = list(project.get("dependencies", []))
    for extra in extras:
        lines += [r for r in project["optional-dependencies"][extra] if r not in lines]
    if gpu:  # onnxruntime-gpu is the same module with the CUDA providers: never both
        lines = [r for r in lines if not re.match(r"onnxruntime\s*[<>=!~;]|onnxruntime$", r)]
    if profile.pip_extra_index_url:  # a pip option in the requirements file: part of the venv's identity too
        lines.insert(0, f"--extra-index-url {profile.pip_extra_index_url}")
    return "\n".join(lines) + "\n"


def robot_profile(profile: RobotProfile, remote_dir: str, model_on_robot: str) -> dict:
    """The profile as the robot reads it: paths point into the release or the robot's own folders."""
    data = {f.name: getattr(profile, f.name) for f in dataclasses.fields(profile) if f.name not in ("root", "source")}
    data["model"] = model_on_robot
    data["log_dir"] = f"{remote_dir}/data"  # outside the releases: logs outlive deploys and rollbacks
    if profile.signing_key_file and not Path(profile.signing_key_file).expanduser().is_absolute():
        data["signing_key_file"] = f"{remote_dir}/{profile.signing_key_file}"  # a robot's key never travels
    return data


def build_release(profile: RobotProfile, q: OnnxQ | None, release_id: str, remote: dict, dest: Path,
                  version: str) -> dict:  # fmt: skip
    """The release folder: code, the task's models/ folder with the chosen model, the robot's profile."""
    for package in CODE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.is_file() and path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts:
                target = dest / path.relative_to(ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    models = dest / "models" / profile.task
    models.mkdir(parents=True)
    for path in sorted((ROOT / "models" / profile.task).iterdir()):
        if path.is_file() and path.suffix not in (".onnx", ".json"):
            shutil.copy2(path, models / path.name)
    model_on_robot = ""
    if q is not None:
        shutil.copy2(q.path, models / "q.onnx")
        shutil.copy2(manifest_path(q.path), models / "q.json")
        model_on_robot = f"models/{profile.task}/q.onnx"
    (dest / "robots").mkdir()
    deployed = robot_profile(profile, remote["dir"], model_on_robot)
    (dest / "robots" / f"{profile.name}.toml").write_text(
        f"# Written by deploy for release {release_id}; edit robots/{profile.name}.toml on the workstation.\n"
        + tomli_w.dumps(deployed)
    )
    (dest / REQUIREMENTS).write_text(requirements(profile))
    files = {p.relative_to(dest).as_posix(): sha256_file(p) for p in sorted(dest.rglob("*")) if p.is_file()}
    release = dict(
        id=release_id, robot=profile.name, task=profile.task, model_sha256=q.sha256 if q else None,
        code_version=version, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        venv_dir=profile.venv_dir, service=profile.service, episodes=profile.episodes, files=files,
    )  # fmt: skip
    (dest / RELEASE_FILE).write_text(json.dumps(release, indent=2) + "\n")
    return release


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


def _prepare_command(remote: Remote, deploy: bool) -> str:
    script = PREPARE.format(dir=remote.profile.remote_dir, deploy=deploy)
    return f"{shlex.quote(remote.profile.python)} -c {shlex.quote(script)}"


def _checked_info(remote: Remote, line: str) -> dict:
    info = json.loads(line)
    if info.get("busy"):
        raise DeployError(
            f"another deploy to {remote.profile.name} is running ({info['dir']}): wait for it to finish, then deploy"
        )
    if tuple(int(v) for v in info["python"].split(".")[:2]) < (3, 10):
        raise DeployError(
            f"{remote.profile.python} on {remote.host} is Python {info['python']}: mpq needs 3.10 or newer; "
            "install one and set python in the robot's profile"
        )
    return info


def prepare_remote(remote: Remote) -> dict:
    """The robot's absolute remote_dir and current release (creating its folders on a first contact)."""
    return _checked_info(remote, remote.run(_prepare_command(remote, deploy=False)).strip().splitlines()[-1])


@contextmanager
def deploy_session(remote: Remote):
    """The robot's info, under its deploy lock for as long as the block runs; clears half-staged releases
    (which, under the lock, can only be left by an interrupted deploy)."""
    process = subprocess.Popen(
        [*remote.ssh_args(), remote.target, _prepare_command(remote, deploy=True)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        if not line:
            stderr = process.stderr.read()
            raise DeployError(remote.explain(process.wait(), stderr, what="ssh"))
        yield _checked_info(remote, line)
    finally:
        process.stdin.close()  # the robot side reads EOF and lets the lock go
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def release_id(info: dict, q: OnnxQ | None, version: str) -> str:
    version = re.sub(r"[^A-Za-z0-9.-]", "_", version)
    base = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{version}-{q.sha256[:8] if q else 'nomodel'}"
    candidate, n = base, 1
    while candidate in info["releases"]:
        n += 1
        candidate = f"{base}.{n}"
    return candidate


def robot_command(remote: Remote, info: dict, release: str, action: str, *args: str) -> str:
    """`python -m onboard.release <action>` on the robot, from the code of `release`."""
    folder = f"{info['dir']}/releases/{release}"
    argv = [remote.profile.python, "-m", "onboard.release", action, info["dir"], *args]
    return f"cd {shlex.quote(folder)} && {shlex.join(argv)}"


def deploy(profile: RobotProfile, model: Path | None = None) -> str:
    """Deploy the profile's model (or `model`) and this code to the robot; returns the release id."""
    model = model if model is not None else profile.model_path
    q = preflight(profile, model)
    with Remote(profile) as remote, deploy_session(remote) as info:
        return _deploy_locked(remote, profile, q, info)


def _deploy_locked(remote: Remote, profile: RobotProfile, q: OnnxQ | None, info: dict) -> str:
    if info["stale"]:
        print(f"removed half-staged release(s) of an interrupted deploy: {', '.join(info['stale'])}")
    version = code_version()
    rid = release_id(info, q, version)
    print(f"deploying release {rid} to {profile.name} ({remote.target}:{info['dir']}), "
          f"model {q.sha256 if q else 'none (plain MPPI)'}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mpq-release-") as tmp:
        release = build_release(profile, q, rid, info, Path(tmp), version)
        print(f"staging: rsync of {len(release['files'])} files", flush=True)
        remote.rsync("--delete", f"{tmp}/", f"{remote.target}:{info['dir']}/releases/{rid}.partial/")
    remote.run(robot_command(remote, info, rid + ".partial", "stage", rid), echo=True)
    print("activating", flush=True)
    remote.run(robot_command(remote, info, rid, "activate", rid), echo=True)
    print(f"release {rid} is current on {profile.name}")
    return rid


def rollback(profile: RobotProfile) -> None:
    preflight(profile, None)
    with Remote(profile) as remote:
        info = prepare_remote(remote)
        if info["current"] is None:
            raise DeployError(f"nothing is deployed on {profile.name} ({info['dir']}): deploy first")
        remote.run(robot_command(remote, info, info["current"], "rollback"), echo=True)


def robot_status(profile: RobotProfile) -> dict:
    preflight(profile, None)
    with Remote(profile) as remote:
        info = prepare_remote(remote)
        if info["current"] is None:
            return dict(remote_dir=info["dir"], current=None, history=[], service=None)
        out = remote.run(robot_command(remote, info, info["current"], "status"))
    return json.loads(out.strip().splitlines()[-1])


# --- pull-data -------------------------------------------------------------------------------------
@dataclass
class PullReport:
    folder: Path
    transferred: list = field(default_factory=list)  # segment names copied this run
    verified: int = 0  # segments in the folder that match MANIFEST
    problems: list = field(default_factory=list)  # one line each: listed, kept out of training
    pruned: list = field(default_factory=list)  # segments deleted on the robot
    gone: list = field(default_factory=list)  # listed by the robot, deleted there by an earlier pull's prune


def pull_data(
    profile: RobotProfile, data_dir: Path = Path("data"), prune: bool = False, bwlimit: int = 0
) -> PullReport:
    """Closed segments + MANIFEST from the robot into `data_dir/<robot>/`, each sha256 verified here."""
    preflight(profile, None)
    with Remote(profile) as remote:
        return _pull(remote, profile, Path(data_dir), prune, bwlimit)


def _pull(remote: Remote, profile: RobotProfile, data_dir: Path, prune: bool, bwlimit: int) -> PullReport:
    info = prepare_remote(remote)
    source = f"{info['dir']}/data/{profile.name}"
    folder = data_dir / profile.name
    incoming = folder / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    report = PullReport(folder)
    limit = [f"--bwlimit={bwlimit}"] if bwlimit else []
    # 1. The robot's MANIFEST as it is now: every segment it lists was closed and fsynced before its line.
    (incoming / MANIFEST).unlink(missing_ok=True)
    remote.rsync(*limit, "--ignore-missing-args", f"{remote.target}:{source}/{MANIFEST}", str(incoming / MANIFEST))
    if not (incoming / MANIFEST).exists():
        print(f"{profile.name} has recorded no closed segment yet ({source})")
        return report
    complete, appending = split_torn_tail((incoming / MANIFEST).read_bytes())
    if appending:  # a line the recorder is appending right now: the next pull takes it
        (incoming / MANIFEST).write_bytes(complete)
    try:
        local_entries = {e["segment"]: e for e in read_manifest(folder)}
    except SegmentError as e:
        raise DeployError(f"{e} (nothing was imported)") from None
    try:
        robot_entries = read_manifest(incoming)
    except SegmentError as e:  # the copy here names the line; the file to repair is the robot's
        robots = str(e).replace(str(incoming / MANIFEST), f"the robot's {source}/{MANIFEST}")
        raise DeployError(f"{robots} (nothing was imported)") from None
    # 2. The segments not here yet, or listed here but gone (moved to rejected/): resumable through rsync's
    # partial folder. A name the robot uses for a different segment (its log folder was reset) is a problem:
    # the one here is kept, never overwritten.
    wanted, clashes = [], set()
    for entry in robot_entries:
        name, local = entry["segment"], local_entries.get(entry["segment"])
        if local is None or (local["sha256"] == entry["sha256"] and not (folder / name).is_file()):
            wanted.append(name)
        elif local["sha256"] != entry["sha256"]:
            clashes.add(name)
            report.problems.append(
                f"{folder / name}: the robot lists a different segment under this name (its log folder was reset?): "
                "the one here is kept; pull into another --data-dir for the robot's"
            )
    if wanted:
        (incoming / "wanted").write_text("\n".join(wanted) + "\n")
        report.transferred = remote.rsync(
            *limit, "--partial-dir=.incoming/partial", "--ignore-missing-args", f"--files-from={incoming / 'wanted'}",
            f"{remote.target}:{source}/", f"{folder}/",
        )  # fmt: skip
    report.gone = [name for name in wanted if not (folder / name).is_file()]  # pruned on the robot by an earlier pull
    # 3. MANIFEST here: what was here, plus the robot's lines for the segments that arrived.
    merged = dict(local_entries)
    for entry in robot_entries:
        if entry["segment"] not in clashes and (folder / entry["segment"]).is_file():
            merged.setdefault(entry["segment"], entry)
    write_atomic(folder / MANIFEST, "".join(json.dumps(merged[n], sort_keys=True) + "\n" for n in sorted(merged)))
    # 4. Verify every segment; one that fails goes to rejected/ (the next pull fetches it again).
    good, problems = verified_segments(folder)
    report.verified = len(good)
    report.problems += problems
    good_names = {p.name for p in good}
    for name in merged:
        if name not in good_names and (folder / name).is_file():
            (folder / "rejected").mkdir(exist_ok=True)
            shutil.move(folder / name, folder / "rejected" / name)
    # 5. Prune: only segments verified here, with the sha256 the robot listed for them.
    if prune:
        robot_sha = {e["segment"]: e["sha256"] for e in robot_entries}
        doomed = [n for n in sorted(good_names) if robot_sha.get(n) == merged[n]["sha256"]]
        if doomed:
            names = " ".join(shlex.quote(n) for n in doomed)
            remote.run(f"cd {shlex.quote(source)} && rm -f -- {names}")
            report.pruned = doomed
    return report


# --- command line (python -m offboard deploy|rollback|pull-data|robot-status) -------------------------
def add_commands(sub) -> None:
    d = sub.add_parser("deploy", help="code, robot profile and model to the robot; restart its service")
    d.add_argument("--robot", required=True, help="robots/<name>.toml, or a path to a profile")
    d.add_argument("--model", help="q.onnx to deploy (q.json beside it); default: the profile's model")
    r = sub.add_parser("rollback", help="back to the robot's previous release")
    r.add_argument("--robot", required=True)
    p = sub.add_parser("pull-data", help="closed segments + MANIFEST from the robot into data/<robot>/, verified")
    p.add_argument("--robot", required=True)
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--prune", action="store_true", help="delete on the robot the segments verified here")
    p.add_argument("--bwlimit", type=int, default=0, help="rsync bandwidth limit, KiB/s (0: none)")
    s = sub.add_parser("robot-status", help="the robot's current release, history and service state")
    s.add_argument("--robot", required=True)


def check_command(args, profile: RobotProfile) -> None:
    """The command line's refusals, made before any connection (each command's preflight follows)."""
    if getattr(args, "model", None) == "":
        raise DeployError("--model is empty: give a q.onnx path, or leave --model out to deploy the profile's model")
    if getattr(args, "bwlimit", 0) < 0:
        raise DeployError(f"--bwlimit {args.bwlimit}: give a limit in KiB/s above 0, or 0 for none")
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None and (blocker := blocking_file(Path(data_dir) / profile.name)) is not None:
        raise DeployError(
            f"--data-dir {data_dir}: {blocker} is a file, not a folder; give a folder for the robot's logs"
        )


def run_command(args, profile: RobotProfile) -> int:
    check_command(args, profile)
    if args.command == "deploy":
        deploy(profile, Path(args.model) if args.model else None)
    elif args.command == "rollback":
        rollback(profile)
    elif args.command == "robot-status":
        print(json.dumps(robot_status(profile), indent=2))
    else:
        report = pull_data(profile, args.data_dir, prune=args.prune, bwlimit=args.bwlimit)
        print(
            f"pulled {len(report.transferred)} new segment(s) into {report.folder}; {report.verified} verified"
            + (f"; pruned {len(report.pruned)} on the robot" if report.pruned else "")
            + (f"; {len(report.gone)} listed by the robot were pruned there earlier" if report.gone else "")
        )
        for line in report.problems:
            print(f"kept out of training: {line}", file=sys.stderr)
        return 1 if report.problems else 0
    return 0
