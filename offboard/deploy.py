"""Models and code to the robot as releases, over ssh and rsync (offboard/remote.py).

deploy     preflight here (the model loads and fits the robot's task), build the release in a temporary
           folder with the sha256 of every file, rsync it into `<remote_dir>/releases/<id>.partial/`, then on
           the robot (onboard/release.py): verify the files, create or reuse the venv, selfcheck, and
           switch `current` atomically with a service restart. Anything that fails before the switch leaves
           the running release alone; a new release that fails to start puts the previous one back.
rollback   the release before the current one in the robot's HISTORY.
robot-status  the robot's current release, its history and the service's state.
The logs come back with pull-data (offboard/pull_data.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import tomli_w

from offboard.remote import (
    Remote,
    RemoteError,
    RemoteSettingsError,
    check_ssh_settings,
    checked_info,
    prepare_command,
    prepare_remote,
)
from onboard.fileio import sha256_file
from onboard.profile import ROOT, RobotProfile
from onboard.qfunction import ModelError, OnnxQ, manifest_path
from onboard.release import RELEASE_FILE, REQUIREMENTS, code_version
from onboard.tasks import get_task

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CODE_PACKAGES = ("onboard", "firmware_bridge")
CODE_SUFFIXES = {".py", ".c", ".cu", ".h", ".xml"}  # everything onboard and firmware_bridge run from


# --- preflight -----------------------------------------------------------------------------------
def preflight(profile: RobotProfile, model: Path | None) -> OnnxQ | None:
    """Everything that can be checked here, before anything on the robot changes: the ssh settings, then the
    model (it loads and fits the robot's task)."""
    check_ssh_settings(profile)
    if model is None:
        return None
    try:
        return OnnxQ(model, get_task(profile.task), threads=1)
    except ModelError as e:
        raise RemoteSettingsError(f"refusing to deploy to {profile.name}: {e}") from None


# --- the release -----------------------------------------------------------------------------------
def requirements(profile: RobotProfile) -> str:
    """The robot's pip requirements: the onboard extra, sim when it runs a stand-in, warp for the warp backend,
    and the profile's gpu extra for cupy and warp (gpu: CUDA 13 from PyPI; gpu-cuda12: JetPack 6,
    onnxruntime-gpu from pip_extra_index_url)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu = [profile.deploy.gpu_extra] if profile.backend in ("cupy", "warp") else []
    warp = ["warp"] if profile.backend == "warp" else []
    extras = ["onboard"] + (["sim"] if profile.serial == "standin" else []) + warp + gpu
    lines = list(project.get("dependencies", []))
    for extra in extras:
        lines += [r for r in project["optional-dependencies"][extra] if r not in lines]
    if gpu:  # onnxruntime-gpu is the same module with the CUDA providers: never both
        lines = [r for r in lines if not re.match(r"onnxruntime\s*[<>=!~;]|onnxruntime$", r)]
    if profile.deploy.pip_extra_index_url:  # a pip option in the requirements file: part of the venv's identity too
        lines.insert(0, f"--extra-index-url {profile.deploy.pip_extra_index_url}")
    return "\n".join(lines) + "\n"


def robot_profile(profile: RobotProfile, remote_dir: str, model_on_robot: str) -> dict:
    """The profile as the robot reads it: paths point into the release or the robot's own folders."""
    data = {f.name: getattr(profile, f.name) for f in dataclasses.fields(profile) if f.name not in ("root", "source")}
    data.update(standin=dataclasses.asdict(profile.standin), deploy=dataclasses.asdict(profile.deploy))
    data["model"] = model_on_robot
    data["log_dir"] = f"{remote_dir}/data"  # outside the releases: logs outlive deploys and rollbacks
    if profile.signing_key_file and not Path(profile.signing_key_file).expanduser().is_absolute():
        data["signing_key_file"] = f"{remote_dir}/{profile.signing_key_file}"  # a robot's key never travels
    return data


def is_q_model(path: Path) -> bool:
    """A trained Q (an .onnx or the .json manifest beside one): the release carries only the chosen one."""
    return path.suffix == ".onnx" or (path.suffix == ".json" and path.with_suffix(".onnx").exists())


def build_release(
    profile: RobotProfile, q: OnnxQ | None, release_id: str, remote: dict, dest: Path, version: str
) -> dict:
    """The release folder: code, the task's models/ folder with the chosen model, the robot's profile."""
    for package in CODE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.is_file() and path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts:
                target = dest / path.relative_to(ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    models = dest / "models" / profile.task
    models.mkdir(parents=True)
    task_folder = get_task(profile.task).xml_path.parent
    # the MJCF and what it includes (meshes, textures, other XML), through linked folders; not dot files (.git)
    for folder, subfolders, names in os.walk(task_folder, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(names):
            path = Path(folder) / name
            if not name.startswith(".") and not is_q_model(path):
                target = models / path.relative_to(task_folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
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
        id=release_id,
        robot=profile.name,
        task=profile.task,
        model_sha256=q.sha256 if q else None,
        code_version=version,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        venv_dir=profile.deploy.venv_dir,
        service=profile.deploy.service,
        episodes=profile.episodes,
        files=files,
    )
    (dest / RELEASE_FILE).write_text(json.dumps(release, indent=2) + "\n")
    return release


@contextmanager
def deploy_session(remote: Remote):
    """The robot's info, under its deploy lock for as long as the block runs; clears half-staged releases
    (which, under the lock, can only be left by an interrupted deploy)."""
    process = subprocess.Popen(
        [*remote.ssh_args(), remote.target, prepare_command(remote, deploy=True)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        if not line:
            stderr = process.stderr.read()
            raise RemoteError(remote.explain(process.wait(), stderr, what="ssh"))
        yield checked_info(remote, line)
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
    argv = [remote.profile.deploy.python, "-m", "onboard.release", action, info["dir"], *args]
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
    print(
        f"deploying release {rid} to {profile.name} ({remote.target}:{info['dir']}), "
        f"model {q.sha256 if q else 'none (plain MPPI)'}",
        flush=True,
    )
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
            raise RemoteError(f"nothing is deployed on {profile.name} ({info['dir']}): deploy first")
        remote.run(robot_command(remote, info, info["current"], "rollback"), echo=True)


def robot_status(profile: RobotProfile) -> dict:
    preflight(profile, None)
    with Remote(profile) as remote:
        info = prepare_remote(remote)
        if info["current"] is None:
            return dict(remote_dir=info["dir"], current=None, history=[], service=None)
        out = remote.run(robot_command(remote, info, info["current"], "status"))
    return json.loads(out.strip().splitlines()[-1])


# --- command line (python -m offboard deploy|rollback|robot-status) ----------------------------------
def add_commands(sub) -> None:
    d = sub.add_parser("deploy", help="code, robot profile and model to the robot; restart its service")
    d.add_argument("--robot", required=True, help="robots/<name>.toml, or a path to a profile")
    d.add_argument("--model", help="q.onnx to deploy (q.json beside it); default: the profile's model")
    r = sub.add_parser("rollback", help="back to the robot's previous release")
    r.add_argument("--robot", required=True)
    s = sub.add_parser("robot-status", help="the robot's current release, history and service state")
    s.add_argument("--robot", required=True)
    for command in (d, r, s):
        command.set_defaults(run=run_command)


def run_command(args, profile: RobotProfile) -> int:
    if args.command == "deploy":
        if args.model == "":
            raise RemoteSettingsError(
                "--model is empty: give a q.onnx path, or leave --model out to deploy the profile's model"
            )
        deploy(profile, Path(args.model) if args.model else None)
    elif args.command == "rollback":
        rollback(profile)
    else:
        print(json.dumps(robot_status(profile), indent=2))
    return 0
