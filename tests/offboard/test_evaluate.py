"""`python -m offboard evaluate`: episodes on the real path from seeded starts, each cost from its verified
segment, the same seed giving the same episodes; a heavier plant from a stand-in option, not an edited MJCF."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest

from firmware_bridge.plant import MujocoPlant, model_xml
from offboard.__main__ import main
from onboard.recorder import read_segment, verified_segments
from onboard.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "offboard", "evaluate", *args], capture_output=True, text=True, cwd=ROOT
    )


def segments_of(evaluation: Path) -> list[tuple[dict, dict]]:
    folder = Path(json.loads(evaluation.read_text())["segments"])
    good, problems = verified_segments(folder)
    assert not problems
    return [read_segment(s) for s in good]


def test_hanging_starts_with_a_given_planner_write_costs_and_their_interval(tmp_path):
    planner = ["--H", "4", "--iters", "1", "--temperature", "0.5", "--sigma", "2"]
    out = evaluate("--starts", "hanging", "--episodes", "2", *planner, "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    assert line.startswith(
        "pendulum, MPPI H=4 iters=1 biased temperature=0.5 sigma=2.0, 2 episodes from the hanging start (seed 30000): "
        "mean episode cost"
    )
    (path,) = tmp_path.glob("*/evaluation.json")
    result = json.loads(path.read_text())
    costs = [metadata["summary"]["cost"] for metadata, _ in segments_of(path)]
    assert result["costs"] == pytest.approx(costs) and result["cost"]["mean"] == pytest.approx(np.mean(costs))
    assert result["cost"]["low"] < result["cost"]["mean"] < result["cost"]["high"]
    task = get_task("pendulum")
    upright = [bool(task.success(np.array(t["/transition"][-1]["next_state"]))) for _, t in segments_of(path)]
    assert result["successes"] == upright and result["success_rate"] == np.mean(upright)  # upright at the end
    assert f"success {np.mean(upright):.2f}" in line
    hanging = task.hanging_state()
    for metadata, topics in segments_of(path):
        assert metadata["segment"]["starts"] == "hanging" and metadata["segment"]["mppi"]["H"] == 4
        assert metadata["segment"]["mppi"]["temperature"] == 0.5 and metadata["segment"]["mppi"]["sigma"] == 2
        assert topics["/transition"][0]["state"] == pytest.approx(hanging.tolist())


def test_a_task_given_by_its_mjcf_alone_is_evaluated_on_the_mujoco_backend_with_its_success(tmp_path):
    out = evaluate("--task", "ball_in_cup", "--episodes", "2", "--iters", "1", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    (path,) = tmp_path.glob("*/evaluation.json")
    result = json.loads(path.read_text())
    task = get_task("ball_in_cup")
    assert len(result["successes"]) == 2
    for (metadata, topics), success in zip(segments_of(path), result["successes"], strict=True):
        assert metadata["segment"]["backend"] == "mujoco"
        assert success == bool(task.in_cup(np.array(topics["/transition"][-1]["next_state"])))  # in the cup at the end


def test_the_same_seed_gives_the_same_episodes_and_another_seed_other_starts(tmp_path):
    costs = {}
    for run, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert (
            evaluate(
                "--episodes", "2", "--H", "4", "--iters", "1", "--seed", seed, "--out", str(tmp_path / run)
            ).returncode
            == 0
        )
        (path,) = (tmp_path / run).glob("*/evaluation.json")
        costs[run] = json.loads(path.read_text())["costs"]
        starts = [topics["/transition"][0]["state"] for _, topics in segments_of(path)]
        assert starts[0] != starts[1]
    assert costs["a"] == costs["b"] and costs["a"] != costs["c"]


def test_a_heavier_plant_is_a_stand_in_option_and_the_true_planner_model_follows_it(tmp_path):
    out = evaluate("--mass-scale", "pole=1.3", "--model", "true", "--episodes", "1", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "MPPI H=8 iters=3 true, plant pole=1.3, 1 uniform starts" in out.stdout
    ((metadata, _),) = segments_of(next(tmp_path.glob("*/evaluation.json")))
    assert metadata["segment"]["standin_mass_scale"] == {"pole": 1.3} and metadata["segment"]["mppi"]["model"] == "true"
    # The planner's TRUE model is the heavier plant, its inertia following the mass (a denser rod, same shape).
    heavy, nominal = get_task("pendulum", {"pole": 1.3}), get_task("pendulum")
    assert heavy.true_params == pytest.approx([1.3, 0.5]) and nominal.true_params == pytest.approx([1.0, 0.5])


def test_the_heavier_plant_accelerates_less_under_the_same_torque():
    def acceleration(scale: dict) -> float:
        plant = MujocoPlant(model_xml("pendulum"), mass_scale=scale)
        plant.data.qpos[:] = np.pi  # hanging at rest: gravity gives no torque, the motor all of it
        plant.data.ctrl[:] = 1.0
        mujoco.mj_forward(plant.model, plant.data)
        return float(plant.data.qacc[0])

    assert acceleration({"pole": 1.3}) == pytest.approx(acceleration({}) / 1.3)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--mass-scale", "cart=2"], "has no body 'cart': its bodies are pole"),
        (["--mass-scale", "pole"], "mass scale 'pole': write BODY=FACTOR"),
        (["--q", "missing.onnx"], "--q missing.onnx: no such file"),
        (["--episodes", "0"], "--episodes 0: use 1 or more"),
        (["--H", "0"], "H=0 must be >= 1"),
        (["--temperature", "0"], "temperature=0.0 must be > 0"),
        (["--sigma", "inf"], "sigma=inf must be > 0 and finite"),
        (["--task", "acrobot"], "unknown task 'acrobot'"),
        (["--seed", "-1"], "--seed -1: use 0 or more"),
        (["--q", "{tmp}/garbage.onnx"], "missing manifest"),  # there, but not a model: refused before any run folder
        (["--out", "{tmp}/a_file/runs"], "a_file is a file, not a folder"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, capsys, args, says):
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    (tmp_path / "a_file").write_text("keep me\n")
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["evaluate", "--out", str(tmp_path / "runs"), *args]) == 2  # in this process: refused before any run
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "runs").exists() and (tmp_path / "a_file").read_text() == "keep me\n"
