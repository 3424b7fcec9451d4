"""`make bench` still runs end to end (speed itself is measured there, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onboard.scheduling import realtime_refusal
from onboard.tasks import ANALYTIC_TASKS, get_task

ROOT = Path(__file__).resolve().parents[2]


def quick_bench(tmp_path, sections: str) -> tuple[dict, str]:
    """`python -m offboard.bench --quick --sections ...`: its JSON report and what it printed."""
    out = subprocess.run(
        [sys.executable, "-m", "offboard.bench", "--quick", "--threads", "1", "--out", str(tmp_path)]
        + ["--sections", sections],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    (report_path,) = tmp_path.glob("mppi-*.json")
    return json.loads(report_path.read_text()), out.stdout


@pytest.mark.long
def test_quick_bench_reports_every_planner_in_json_and_a_table(tmp_path):
    """Every section whose results do not depend on the wall clock: the onboard loop's (realtime periods, CPU
    hogs) and the faulty link's (its episodes have a time budget) run in the timing phase, below."""
    report, stdout = quick_bench(tmp_path, "step,link,mujoco,ray")
    assert not set(report) & {"loop", "faults"}
    step = report["step"]  # every planner at each thread count, the peer in both its settings, and the limit
    assert step["thread_counts"] == [1]
    planners = {(r["case"], r["planner"]) for r in step["rows"]}
    limit = {"Q alone", "rollout alone"}
    one_iteration = {
        (case, planner)
        for case in ("K=1024 H=32 Q=2x256", "K=24 H=8 Q=2x100")
        for planner in (
            "mpq numpy",
            "mpq c",
            "mpq c in the loop",
            "pytorch-mppi float32",
            "pytorch-mppi float64",
            *limit,
        )
    }
    acting = {("K=24 H=8 Q=2x100 3 iters", planner) for planner in ("mpq numpy", "mpq c", "mpq c in the loop", *limit)}
    assert planners == one_iteration | acting
    assert step["cases"]["K=24 H=8 Q=2x100 3 iters"]["mppi"]["n_iters"] == 3
    assert step["cases"]["K=24 H=8 Q=2x100"]["mppi"]["n_iters"] == 1
    assert all(0 < r["median_ms"] <= r["p99_ms"] for r in step["rows"])
    for r in step["rows"]:  # mpq's rows against the limit and the faster pytorch-mppi, as measured in the run
        if r["planner"].startswith("mpq"):
            same = [x for x in step["rows"] if x["case"] == r["case"] and x["threads"] == r["threads"]]
            iters = step["cases"][r["case"]]["mppi"]["n_iters"]
            floor = iters * sum(x["median_ms"] for x in same if x["planner"] in limit)
            assert r["x_limit"] == pytest.approx(r["median_ms"] / floor)
            peers = [x["median_ms"] for x in same if x["planner"].startswith("pytorch-mppi")]
            assert ("x_faster_than_best_peer" in r) == bool(peers)
            if peers:
                assert r["x_faster_than_best_peer"] == pytest.approx(min(peers) / r["median_ms"])
    assert len(step["targets"]) == 3
    grown = {(r["K"], r["H"]) for r in step["growth"]["rows"]}
    assert grown == {(K, 32) for K in (256, 1024, 4096, 16384)} | {(1024, H) for H in (4, 8, 16, 64)}
    link = report["link"]
    assert 0 < link["round_trip_us_median"] <= link["round_trip_us_p99"] and link["steps_per_second"] > 0
    assert link["link_counters"]["seq_gaps"] == 0 and link["link_counters"]["crc_errors"] == 0
    assert "median ms" in stdout and "round trip median us" in stdout
    assert "pytorch-mppi float32" in stdout and "x limit" in stdout and "ns per sample-step" in stdout
    mujoco = report["mujoco"]  # the MJCF planner against raw mujoco.rollout and a Python loop, every case
    assert {(r["task"], r["case"], r["planner"]) for r in mujoco["rows"]} == {
        (task, case, planner)
        for task in ("pendulum", "cartpole")
        for case in ("K=36 H=4 3 iters", "K=1024 H=32")
        for planner in ("mpq mujoco", "raw rollout", "python mj_step")
    }
    assert all(r["steps_per_second"] > 0 for r in mujoco["rows"]) and len(mujoco["targets"]) == 8
    assert "MuJoCo steps/s" in stdout
    ray = report["ray"]  # the paths past one machine against their number of workers, and a projection
    for part, unit in (("fleet", "episodes_per_minute"), ("targets", "per_second")):
        rates = ray[part][unit]
        assert set(rates) >= {"this process, no Ray"} and len(rates) == 3 and all(v > 0 for v in rates.values())
        assert 0 <= ray[part]["serial_fraction"] <= 1 and set(ray[part]["projected"]) == {"8", "64"}
        assert ray[part]["task"] == "pendulum"  # quick: the task whose episodes take a second
    assert "PROJECTED" in stdout


@pytest.mark.timing
def test_quick_bench_runs_the_onboard_loop_and_the_faulty_link(tmp_path):
    report, stdout = quick_bench(tmp_path, "loop,faults")
    assert set(report) >= {"loop", "faults", "machine"} and not set(report) & {"step", "link", "mujoco", "ray"}
    loop = report["loop"]
    assert loop["lockstep"]["steps"] == 200 and loop["lockstep"]["peak_rss_mb"] > 0
    assert loop["lockstep_3_iters"]["steps"] == 200 and "error" not in loop["lockstep_3_iters"]
    assert set(loop["realtime"]) == {"50 Hz"} and "error" not in loop["realtime"]["50 Hz"]
    assert (
        set(loop["realtime_loaded"]) == {"SCHED_FIFO 50", "normal priority"} and loop["realtime_loaded_rate"] == "50 Hz"
    )
    if realtime_refusal(50) is None:  # at realtime priority the loop plans on, with a spinning process per core
        assert loop["realtime_loaded"]["SCHED_FIFO 50"]["scheduling"] == "SCHED_FIFO 50"
    assert "Onboard loop against the stand-in" in stdout and "onboard process peak memory" in stdout
    faults = {r["rate"]: r for r in report["faults"]["rows"]}  # the faulty link against a clean one
    assert set(faults) == {0.0, 0.01} and faults[0.0]["episodes_completed"] == 1
    assert faults[0.01]["faults_injected"]["to_plant"]["flip"] > 0 and "byte faults" in stdout
    assert faults[0.01]["actions_match"] and faults[0.01]["applied_once"]


def test_bench_sections_are_checked_before_anything_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "offboard.bench", "--sections", "mujoco,gpu", "--out", str(tmp_path / "bench")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "give one or more of step,link,loop,mujoco,faults,ray" in out.stderr
    assert out.stderr.count("\n") == 1 and not (tmp_path / "bench").exists()


@pytest.mark.parametrize("name", ANALYTIC_TASKS)
def test_the_torch_restatement_for_pytorch_mppi_is_the_task(name):
    """pytorch-mppi needs torch functions: the copy of each task's model it runs must be the task's."""
    import torch

    from offboard.bench_step import torch_model

    task = get_task(name)
    rng = np.random.default_rng(3)
    params = task.planner_params("mean", (), None)
    dynamics, running_cost, obs = torch_model(task, params)
    states = np.stack([task.initial_state(rng) for _ in range(64)]) * 3.0  # fast and near the rails too
    actions = rng.uniform(task.u_min, task.u_max, (64, task.act_dim))
    s, u = torch.tensor(states), torch.tensor(actions)
    np.testing.assert_allclose(dynamics(s, u).numpy(), task.step(states, actions, params), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(running_cost(s, u).numpy(), task.cost(states, actions), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(obs(s).numpy(), task.obs(states), rtol=1e-9, atol=1e-9)
