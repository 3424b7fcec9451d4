"""`python -m onboard plan`: plans for each task and backend; bad input is one line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from onboard.mppi import MPPIConfig
from onboard.tasks import get_task
from tests.gpu import ALL_BACKENDS

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    return subprocess.run([sys.executable, "-m", "onboard", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_plan_prints_a_plan_within_bounds(make_q, backend):
    path, _ = make_q("cartpole")
    out = run("plan", "--task", "cartpole", "--backend", backend, "--q", str(path), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["q"]["path"] == str(path)
    assert len(report["actions"]) == report["config"]["H"] == 12
    assert all(-10 <= a[0] <= 10 for a in report["actions"])


def test_plan_with_a_q_trained_for_other_settings_says_so_on_a_warning_line(make_q):
    task = get_task("pendulum")
    path, _ = make_q("pendulum", extra={"mppi": MPPIConfig.for_task(task).to_dict()})
    out = run("plan", "--task", "pendulum", "--q", str(path), "--K", "16")
    assert out.returncode == 0 and "first action" in out.stdout
    assert out.stderr.startswith("warning: ") and "K=16 (trained with 24)" in out.stderr, out.stderr
    out = run("plan", "--task", "pendulum", "--q", str(path))  # the settings it was trained with: no warning
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr


@pytest.mark.parametrize("task, backend", [("pendulum", "c"), ("ball_in_cup", "mujoco")])
def test_plan_without_a_backend_plans_on_the_tasks_cpu_backend(task, backend):
    """The compiled closed form where the task has one, MuJoCo for a task given by its MJCF alone."""
    out = run("plan", "--task", task, "--K", "8", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["backend"] == backend


def test_plan_from_a_given_state_in_text():
    out = run("plan", "--task", "pendulum", "--state", "0,0.1,0", "--K", "64")
    assert out.returncode == 0, out.stderr
    assert "first action" in out.stdout and "ESS" in out.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--q", "/nonexistent/q.onnx"], "missing model file /nonexistent/q.onnx"),
        (["--state", "1,2,3,4"], "--state has 4 values"),
        (["--K", "0"], "K=0 must be >= 1"),
        (["--state", "0,nan,0"], "every value must be a finite number"),
        (["--state", "a,b,c"], "--state a,b,c: give 3 comma-separated numbers (time, qpos, qvel)"),
        (["--threads", "0"], "--threads 0: use 1 or more"),
        (["--seed", "-1"], "seed=-1 must be >= 0"),
        (["--K", "100000000000"], "not enough memory for these MPPI settings"),
    ],
)
def test_bad_input_is_one_clear_line(args, expected):
    out = run("plan", "--task", "pendulum", *args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip().count("\n") == 0 and expected in out.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--episodes", "-1"], "--episodes -1: use 0 (until stopped) or a positive count"),
        (["--log-dir", ""], "--log-dir '': give the folder for the segments"),  # the flag named, not the profile
        (["--robot", "/tmp"], "robot '/tmp': give a robot's name (robots/<name>.toml) or the path of its .toml"),
    ],
)
def test_bad_run_options_are_one_clear_line_naming_the_option(args, expected):
    out = run("run", "--quiet", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().count("\n") == 0 and expected in out.stderr


def test_tampered_model_is_refused(make_q):
    path, _ = make_q()
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    out = run("plan", "--q", str(path))
    assert out.returncode == 2 and "sha256" in out.stderr and out.stderr.count("\n") == 1


def test_the_manifest_given_for_the_model_is_named_as_such(make_q):
    path, _ = make_q()
    out = run("plan", "--q", str(path.with_suffix(".json")))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"{path.with_suffix('.json')} is the model's manifest: give the q.onnx beside it" in out.stderr


def test_mistyped_manifest_is_one_line_not_a_traceback(make_q):
    path, _ = make_q()
    manifest_file = path.with_suffix(".json")
    manifest = json.loads(manifest_file.read_text())
    manifest["inputs"] = ["obs", "act"]
    manifest_file.write_text(json.dumps(manifest))
    out = run("plan", "--q", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "mistypes inputs" in out.stderr
