"""A short `make demo`: the whole learning loop through the stand-in, and what it leaves behind."""

from __future__ import annotations

import json

import numpy as np

from offboard.demo import main
from onboard.mppi import MPPI, MPPIConfig
from onboard.qfunction import OnnxQ
from onboard.tasks import get_task


def test_short_demo_learns_exports_reloads_and_reports(tmp_path):
    args = ["--iterations", "2", "--episodes-per-iteration", "5", "--eval-episodes", "3"]
    assert main([*args, "--updates-per-iteration", "300", "--out", str(tmp_path)]) == 0
    (run_dir,) = tmp_path.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["baselines"]) == {"MPPI H=8 biased", "MPPI H=32 biased", "MPPI H=32 TRUE model"}
    assert set(results["learners"]) == {"MPQ", "soft-Q"} and results["config"]["iterations"] == 2
    curve = results["learners"]["MPQ"]["curve"]
    assert [p["training_episodes"] for p in curve] == [5, 10]
    assert all(np.isfinite(p["eval_cost_mean"]) for p in curve)
    first = curve[0]  # training lowers the soft-Bellman error on held-out transitions
    assert first["holdout_bellman_error"] < first["holdout_bellman_error_before"]
    # After 10 episodes the learned Q already swings the pendulum up on starts where MPPI with the same
    # horizon and biased model does not: the point of MPQ, on the same fixed-seed starts.
    assert curve[-1]["eval_cost_mean"] < 0.5 * results["baselines"]["MPPI H=8 biased"]["eval_cost_mean"]
    assert (run_dir / "learning_curve.png").stat().st_size > 10_000
    task = get_task("pendulum")
    q = OnnxQ(run_dir / "q.onnx", task)  # the final model loads onboard and plans
    assert len(q.manifest["segments"]) == 10
    u = MPPI(task, MPPIConfig.for_task(task), "c", q=q).act(task.hanging_state())
    assert np.isfinite(u).all()


def test_a_short_horizon_that_is_not_short_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(["--horizon", "32", "--out", str(tmp_path / "runs")]) == 2
    assert "--horizon 32 must be >= 1 and below --long-horizon 32" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
