"""What a release carries, without a robot: its files and hashes, the profile as the robot reads it,
and the pip requirements for each kind of robot."""

from __future__ import annotations

import json
import shutil

import pytest

from offboard.deploy import build_release, requirements
from onboard.fileio import sha256_file
from onboard.profile import load_profile
from onboard.qfunction import OnnxQ
from onboard.release import RELEASE_FILE, verify_files
from onboard.tasks import get_task
from onboard.tasks.base import Task

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def test_requirements_follow_the_robot():
    plain = requirements(load_profile("jetson", backend="c")).splitlines()
    assert "onnxruntime>=1.17" in plain and not any(r.startswith(("mujoco-warp", "warp-lang", "cupy")) for r in plain)
    assert any(r.startswith("mujoco>") for r in plain)  # the robot reads its task's MJCF
    warp = requirements(load_profile("jetson", backend="warp")).splitlines()  # MuJoCo Warp beside CuPy
    assert any(r.startswith("mujoco-warp") for r in warp) and any(r.startswith("cupy-cuda12x") for r in warp)
    gpu = requirements(load_profile("jetson")).splitlines()  # backend = "cupy"
    assert any(r.startswith("cupy-cuda12x") for r in gpu) and any(r.startswith("onnxruntime-gpu") for r in gpu)
    cuda13 = requirements(load_profile("jetson", deploy=dict(gpu_extra="gpu"))).splitlines()  # a CUDA 13 robot
    assert any(r.startswith("cupy-cuda13x") for r in cuda13) and not any(r.startswith("cupy-cuda12x") for r in cuda13)
    assert not any(r.startswith("onnxruntime>") for r in gpu)  # never both builds of the same module
    assert any(r.startswith("mujoco") for r in requirements(load_profile("loopback")).splitlines())  # its stand-in
    indexed = requirements(
        load_profile("jetson", deploy=dict(pip_extra_index_url="https://example.org/jp6"))
    ).splitlines()
    assert indexed[0] == "--extra-index-url https://example.org/jp6"
    assert not any(r.startswith("torch") for r in gpu + plain)  # the robot never trains


def test_a_release_lists_every_file_with_its_sha256_and_rewrites_the_profile(tmp_path, make_q):
    model, _ = make_q("pendulum")
    profile = load_profile("jetson", backend="c", signing_key_file="signing.key")
    q = OnnxQ(model, get_task("pendulum"))
    release = build_release(profile, q, "r1", {"dir": "/home/mpq/mpq"}, tmp_path / "r1", "v1")
    folder = tmp_path / "r1"
    assert json.loads((folder / RELEASE_FILE).read_text()) == release
    assert release["model_sha256"] == q.sha256 and release["robot"] == "jetson"
    for name, sha in release["files"].items():
        assert sha256_file(folder / name) == sha
    assert {
        "onboard/loop.py",
        "onboard/backends/rollout_kernel.cu",
        "firmware_bridge/mpq.xml",
        "models/pendulum/pendulum.xml",
        "models/pendulum/q.onnx",
        "models/pendulum/q.json",
        "robots/jetson.toml",
        "requirements.txt",
    } <= set(release["files"])
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in release["files"])
    on_robot = tomllib.loads((folder / "robots" / "jetson.toml").read_text())
    assert on_robot["model"] == "models/pendulum/q.onnx"
    assert on_robot["log_dir"] == "/home/mpq/mpq/data"  # outside the releases
    assert on_robot["signing_key_file"] == "/home/mpq/mpq/signing.key"  # the robot's own key, never shipped
    assert not (folder / "signing.key").exists()
    assert verify_files(folder) == []


def test_a_release_carries_the_task_folder_with_its_meshes_and_only_the_chosen_q(tmp_path, make_q, monkeypatch):
    """An MJCF that includes files (meshdir="assets", the usual layout of a robot's description) runs on the robot
    only if those travel too; a Q trained earlier and left in the folder does not."""
    models = tmp_path / "models"
    shutil.copytree(get_task("pendulum").xml_path.parent, models / "pendulum")
    (models / "pendulum" / "assets").mkdir()
    (models / "pendulum" / "assets" / "tip.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (models / "pendulum" / "assets" / "colours.json").write_text("{}\n")  # an asset, not a Q's manifest
    old_q, _ = make_q("pendulum")
    shutil.copy(old_q, models / "pendulum" / "q-old.onnx")
    shutil.copy(old_q.with_suffix(".json"), models / "pendulum" / "q-old.json")
    (models / "pendulum" / ".git").mkdir()  # a robot description kept as a clone: its history stays here
    (models / "pendulum" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    textures = tmp_path / "shared-textures"  # a folder linked in, as a shared asset library often is
    textures.mkdir()
    (textures / "wood.png").write_bytes(b"\x89PNG")
    (models / "pendulum" / "textures").symlink_to(textures)
    monkeypatch.setattr(Task, "models_dir", models)
    chosen, _ = make_q("pendulum")
    q = OnnxQ(chosen, get_task("pendulum"))
    release = build_release(load_profile("loopback"), q, "r1", {"dir": "/robot"}, tmp_path / "r1", "v1")
    shipped = {name for name in release["files"] if name.startswith("models/")}
    assert shipped == {
        "models/pendulum/pendulum.xml",
        "models/pendulum/assets/tip.obj",
        "models/pendulum/assets/colours.json",
        "models/pendulum/textures/wood.png",
        "models/pendulum/q.onnx",
        "models/pendulum/q.json",
    }
    assert release["files"]["models/pendulum/q.onnx"] == q.sha256


@pytest.mark.parametrize("damage", ["changed", "missing", "extra"])
def test_a_damaged_release_is_named_file_by_file(tmp_path, damage):
    folder = tmp_path / "r1"
    build_release(load_profile("loopback"), None, "r1", {"dir": "/robot"}, folder, "v1")
    target = folder / "onboard" / "mppi.py"
    if damage == "changed":
        target.write_text(target.read_text() + "\n# edited on the robot\n")
    elif damage == "missing":
        target.unlink()
    else:
        (folder / "onboard" / "debug.py").write_text("print('left behind')\n")
    (problem,) = verify_files(folder)
    expected = {
        "changed": "onboard/mppi.py: sha256",
        "missing": "onboard/mppi.py: missing",
        "extra": "onboard/debug.py: not part of the release",
    }[damage]
    assert problem.startswith(expected)
