"""A short `make demo`: the whole learning loop through the stand-in, and what it leaves behind."""

from __future__ import annotations

import fcntl
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from offboard.demo import DemoConfig, Stop, claim_line, claims, main, parse_config
from offboard.stats import seeds_success_interval
from onboard.mppi import MPPI, MPPIConfig
from onboard.qfunction import OnnxQ
from onboard.recorder import read_manifest, read_segment, verified_segments
from onboard.tasks import get_task
from tests.conftest import terminal_signals

ROOT = Path(__file__).resolve().parents[2]


def demo_stopped_when(args: list[str], ready, signum=signal.SIGINT, within: float = 120) -> tuple[int, str, str]:
    """`python -m offboard.demo args` in its own process, sent signum once ready() holds: (exit code, out, err)."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "offboard.demo", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=terminal_signals,
    )
    try:
        deadline = time.monotonic() + within
        while not ready():
            assert demo.poll() is None and time.monotonic() < deadline, demo.communicate()
            time.sleep(0.02)
        demo.send_signal(signum)
        stdout, stderr = demo.communicate(timeout=60)
    finally:
        demo.kill()
    return demo.returncode, stdout, stderr


@pytest.mark.long
def test_short_demo_learns_exports_reloads_and_reports(tmp_path, capsys):
    args = ["--iterations", "2", "--episodes-per-iteration", "5", "--eval-episodes", "3", "--final-episodes", "2"]
    assert main([*args, "--updates-per-iteration", "300", "--robustness", "pole=1.3", "--out", str(tmp_path)]) == 0
    (run_dir,) = tmp_path.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["baselines"]) == {"MPPI H=8 biased", "MPPI H=32 biased", "MPPI H=32 TRUE model"}
    assert set(results["learners"]) == {"MPQ", "MPQ(lambda)", "soft-Q"} and results["config"]["iterations"] == 2
    (mpq,) = results["learners"]["MPQ"]  # one training seed
    curve = mpq["curve"]
    assert [p["training_episodes"] for p in curve] == [5, 10]
    assert all(np.isfinite(p["eval_cost_mean"]) and 0 <= p["eval_success_rate"] <= 1 for p in curve)
    first = curve[0]  # training lowers the soft-Bellman error on held-out transitions
    assert first["holdout_bellman_error"] < first["holdout_bellman_error_before"]
    # After 10 episodes the learned Q already swings the pendulum up on starts where MPPI with the same
    # horizon and biased model does not: the point of MPQ, on the same fixed-seed starts.
    assert curve[-1]["eval_cost_mean"] < 0.5 * results["baselines"]["MPPI H=8 biased"]["eval_cost_mean"]
    assert (run_dir / "learning_curve.png").stat().st_size > 10_000
    assert results["video"]["frames"] == 201 and (run_dir / "episode.mp4").stat().st_size > 1_000  # 200 steps
    task = get_task("pendulum")
    q = OnnxQ(run_dir / "q.onnx", task)  # the final model loads onboard and plans
    assert len(q.manifest["segments"]) == 10
    assert q.manifest["mppi"]["td_lambda"] == 0.5  # MPQ(lambda)'s: lambda went from 1 to 0.5 over the 2 iterations
    assert [p["td_lambda"] for p in results["learners"]["MPQ(lambda)"][0]["curve"]] == [1.0, 0.5]
    u = MPPI(task, MPPIConfig.for_task(task), "c", q=q).act(task.hanging_state())
    assert np.isfinite(u).all()

    # The final evaluation: every setting on the same new starts, ratios to the TRUE-model MPPI with intervals.
    final = results["final"]
    assert list(final) == ["uniform", "hanging", "uniform, plant pole=1.3"]
    assert set(final["uniform"]["rows"]) == {*results["baselines"], "MPQ", "MPQ(lambda)", "soft-Q"}
    assert set(final["uniform, plant pole=1.3"]["rows"]) == {"MPPI H=32 TRUE model", "MPQ", "MPQ(lambda)"}
    reference = final["hanging"]["rows"]["MPPI H=32 TRUE model"]
    assert reference["ratio"]["ratio"] == 1.0 and len(reference["costs"][0]) == 2
    row = final["hanging"]["rows"]["MPQ"]
    assert row["ratio"]["low"] <= row["ratio"]["ratio"] <= row["ratio"]["high"]
    assert row["ratio"]["ratio"] == pytest.approx(np.mean(row["costs"]) / np.mean(reference["costs"]))
    assert set(results["claims"]) == {f"{a}, {b}" for a in ("MPQ", "MPQ(lambda)") for b in ("uniform", "hanging")}
    claim = results["claims"]["MPQ(lambda), uniform"]
    assert claim["target"] == 1.05 and claim["met"] == (claim["high"] <= 1.05)
    assert (
        "| MPQ | 1 |" in (run_dir / "table.md").read_text() and "success [95 %]" in (run_dir / "table.md").read_text()
    )
    assert np.array(row["successes"]).shape == (1, 2) and row["success"]["mean"] == np.mean(row["successes"])
    # --report prints the finished run's table and claims again from its results.json
    capsys.readouterr()
    assert main(["--report", str(run_dir)]) == 0
    report = capsys.readouterr().out
    assert report.startswith((run_dir / "table.md").read_text()) and "claim, hanging: MPQ(lambda) / " in report


def test_a_report_of_a_folder_that_is_not_a_finished_run_is_one_line(tmp_path, capsys):
    assert main(["--report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --report {tmp_path}: not a finished demo run") and err.count("\n") == 1
    assert main(["--report", str(tmp_path), "--seeds", "2"]) == 2
    assert "give it alone" in capsys.readouterr().err


def test_a_short_horizon_that_is_not_short_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(["--horizon", "32", "--out", str(tmp_path / "runs")]) == 2
    assert "--horizon 32 must be >= 1 and below --long-horizon 32" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--iterations", "0"], "--iterations 0"),
        (["--episodes-per-iteration", "0"], "--episodes-per-iteration 0"),
        (["--eval-episodes", "0"], "--eval-episodes 0"),
        (["--eval-episodes", "-1"], "--eval-episodes -1"),
        (["--updates-per-iteration", "0"], "--updates-per-iteration 0"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--seed", "-1"], "--seed -1"),
        (["--seeds", "0"], "--seeds 0: use 1 or more"),
        (["--final-episodes", "-1"], "--final-episodes -1: use 0 or more"),
        (["--robustness", "pole=1.3"], "--robustness runs in the final evaluation: give --final-episodes too"),
        (["--robustness", "cart=2", "--final-episodes", "5"], "has no body 'cart'"),
        (["--torch-threads", "0"], "--torch-threads 0: use 1 or more"),
        (["--td-lambda", "1.5"], "--td-lambda 1.5: use a number from 0 to 1"),
        (["--td-lambda-final", "-0.1"], "--td-lambda-final -0.1: use a number from 0 to 1"),
        (["--task", "acrobot"], "unknown task 'acrobot'"),
        (["--out", "{tmp}/a_file"], "a_file is a file, not a folder"),
        (["--ray", "auto", "--workers", "2"], "--ray runs the jobs one at a time"),
        (["--ray", "garbage:xx"], "--ray garbage:xx: give auto (the cluster on this machine) or its address host:port"),
        (["--fleet", "0"], "--fleet 0: use 1 or more"),
        (["--workers", "0"], "--workers 0: use 1 or more"),
        (["--eval-every", "0"], "--eval-every 0: use 1 or more"),
        (["--final-starts", "sideways"], "--final-starts sideways: use uniform, hanging or both"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(tmp_path, capsys, args, says):
    """0 episodes means "until stopped" to the loop: a 0 here would run forever."""
    (tmp_path / "a_file").write_text("keep me\n")
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["--out", str(tmp_path / "runs"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and says in err, err
    assert not (tmp_path / "runs").exists() and (tmp_path / "a_file").read_text() == "keep me\n"


def test_a_signal_stops_the_loop_cleanly_while_episodes_run_and_at_once_elsewhere():
    stop = Stop()
    with pytest.raises(KeyboardInterrupt):  # training, export: at once
        stop.handler(signal.SIGINT, None)
    stop = Stop()
    stop.in_episodes = True
    stop.handler(signal.SIGTERM, None)  # the loop ends its segment at its next step ...
    assert stop()
    with pytest.raises(KeyboardInterrupt):  # ... and a second Ctrl-C does not wait for it
        stop.handler(signal.SIGINT, None)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])  # SIGHUP: the terminal closed
def test_one_ctrl_c_stops_the_whole_demo_and_reports_no_result(tmp_path, signum):
    args = ["--eval-episodes", "1000", "--out", str(tmp_path)]
    # stopped while the first baseline is in its episodes
    returncode, stdout, stderr = demo_stopped_when(args, lambda: list(tmp_path.glob("*/baselines/*/*.mcap")), signum)
    (run_dir,) = tmp_path.iterdir()
    assert returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last == (
        f"interrupted: the demo stopped; its partial run is in {run_dir} (no results.json): go on with "
        f"python -m offboard.demo --resume {run_dir}"
    ), stderr
    assert "eval cost" not in stdout  # the interrupted baseline is no result, and no later stage ran
    assert not (run_dir / "results.json").exists()
    (folder,) = (run_dir / "baselines").iterdir()
    segments, problems = verified_segments(folder)  # the loop closed its segment cleanly
    assert 1 <= len(segments) < 1000 and not problems and not list(folder.glob("*.partial"))


def test_a_task_brings_its_own_demo_settings_and_the_command_line_wins():
    assert parse_config([]).iterations == DemoConfig.iterations
    ball = parse_config(["--task", "ball_in_cup"])
    assert (ball.iterations, ball.episodes_per_iteration, ball.mpq_lambda) == (4, 10, False)
    assert (ball.explore, ball.target_iters) == ((0.25, 0.8, 0.0), 1)  # collection explores; one-iteration targets
    assert parse_config(["--task", "ball_in_cup", "--iterations", "2", "--mpq-lambda", "true"]).iterations == 2
    assert parse_config(["--task", "ball_in_cup", "--mpq-lambda", "true"]).mpq_lambda is True


def test_a_sparse_task_is_held_to_its_success_rate_and_to_beating_the_biased_baselines():
    """By the lower end of the learner's interval over its seeds, as a dense task by the upper end of its ratio's."""

    def row(*rates):  # one row of 50 starts per seed, each seed succeeding at its rate
        successes = [[i < round(50 * rate) for i in range(50)] for rate in rates]
        return dict(successes=successes, success=seeds_success_interval(successes))

    rows = {
        "MPPI H=4 biased": row(0.2),
        "MPPI H=48 biased": row(0.6),
        "MPPI H=48 TRUE model": row(1.0),  # the upper bound: not one to beat
        "MPQ": row(1.0, 0.98),
        "soft-Q": row(0.0),
    }
    final = {s: dict(rows=rows, reference="MPPI H=48 TRUE model", mass_scale="") for s in ("uniform", "hanging")}
    cfg = DemoConfig(task="ball_in_cup")
    claim = claims(cfg, final)["MPQ, uniform"]
    assert claim["success"] == 0.99 and claim["seeds"] == 2 and claim["starts"] == 50 and claim["met"]
    assert claim["low"] >= 0.85 and set(claim["above"]) == {"MPPI H=4 biased", "MPPI H=48 biased", "soft-Q"}
    line = claim_line(claim, "MPPI H=48 TRUE model")
    assert "success 0.99 [" in line and "x 50 uniform starts" in line and line.endswith("(lower end): met")
    rows["MPQ"] = row(0.96, 0.80)  # a mean of 0.88, but seeds this far apart leave the rate unknown: not met
    assert claims(cfg, final)["MPQ, uniform"]["success"] == 0.88 and not claims(cfg, final)["MPQ, uniform"]["met"]
    rows["MPQ"] = row(1.0, 0.98)
    rows["MPPI H=48 biased"] = row(0.9)  # a baseline inside the learner's interval: not met, whatever the target
    assert not claims(cfg, final)["MPQ, uniform"]["met"]


@pytest.mark.long
def test_the_domain_randomised_learner_collects_on_drawn_plants_and_is_evaluated_on_the_true_one(tmp_path):
    args = [
        "--task",
        "ball_in_cup",
        "--iterations",
        "1",
        "--episodes-per-iteration",
        "1",
        "--eval-episodes",
        "1",
        "--updates-per-iteration",
        "5",
        "--horizon",
        "2",
        "--long-horizon",
        "3",
        "--soft-q",
        "false",
        "--domain-randomisation",
        "true",
        "--video",
        "false",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    (run_dir,) = tmp_path.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["learners"]) == {"MPQ", "MPQ trained with DR"}
    here = run_dir / "MPQ_trained_with_DR" / "seed0"
    for folder, randomised in (
        (here / "data" / "robot", True),
        (here / "eval" / "iter001", False),
        (run_dir / "MPQ" / "seed0" / "data" / "robot", False),
    ):
        (segment,), problems = verified_segments(folder)
        assert problems == []
        metadata = read_segment(segment)[0]["segment"]
        plant = metadata["standin_plant"]
        assert (plant is not None) == randomised, folder
        assert plant is None or 0.0087 <= plant["body_mass[ball]"] <= 0.87
        exploring = folder.name == "robot"  # collection explores (the task's demo settings); evaluation does not
        assert metadata["mppi"]["explore"] == ([0.25, 0.8, 0.0] if exploring else [0.0, 0.0, 0.0]), folder


def test_domain_randomisation_of_a_task_with_derived_fields_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(["--domain-randomisation", "true", "--out", str(tmp_path / "runs")]) == 2
    assert "--domain-randomisation: task pendulum derives body_inertia" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


SMALL = [
    *("--iterations", "1", "--episodes-per-iteration", "2", "--eval-episodes", "1", "--updates-per-iteration", "20"),
    *("--final-episodes", "1", "--final-starts", "uniform", "--seeds", "1", "--mpq-lambda", "false"),
    *("--soft-q", "false", "--video", "false"),
]


@pytest.fixture(scope="session")
def small_run(request, tmp_path_factory) -> Path:
    """The run folder of one demo at the SMALL settings: the reference the distributed runs are compared with (they
    only read it). Made once per session, by whichever xdist worker needs it first (their temp folders share a
    parent), under a lock the other waits on; made again by the next if the first failed midway."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if hasattr(request.config, "workerinput") else base
    out = root / "small-demo"
    with open(root / "small-demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "small-demo.done").exists():
            shutil.rmtree(out, ignore_errors=True)  # a worker that failed midway
            assert main([*SMALL, "--out", str(out)]) == 0
            (root / "small-demo.done").touch()
    (run_dir,) = out.iterdir()
    return run_dir


def numbers(run_dir: Path) -> dict:
    """A run's results without what differs between two runs of the same settings (times, folders)."""
    results = json.loads((run_dir / "results.json").read_text())
    learners = {
        label: [[(p["eval_costs"], p["holdout_bellman_error"]) for p in r["curve"]] for r in runs]
        for label, runs in results["learners"].items()
    }
    final = {
        setting: {label: row["costs"] for label, row in f["rows"].items()} for setting, f in results["final"].items()
    }
    return dict(baselines={k: v["eval_costs"] for k, v in results["baselines"].items()}, learners=learners, final=final)


@pytest.mark.long
def test_jobs_in_two_worker_processes_give_the_same_run_as_one_after_another(small_run, tmp_path):
    one = small_run
    assert main([*SMALL, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    (two,) = (tmp_path / "two").iterdir()
    expected = numbers(one)
    assert len(expected["learners"]["MPQ"]) == 1 and set(expected["final"]) == {"uniform"}
    assert json.loads((one / "results.json").read_text())["video"] is None and not (one / "episode.mp4").exists()
    assert numbers(two) == expected
    assert sorted(p.name for p in (two / "jobs").iterdir()) == sorted(p.name for p in (one / "jobs").iterdir())


@pytest.mark.long
def test_a_stopped_run_goes_on_with_resume_keeping_its_finished_jobs(tmp_path, capsys):
    # stopped once the baselines are done and MPQ collects
    collecting = lambda: list(tmp_path.glob("*/MPQ/seed0/data/robot/*.mcap"))  # noqa: E731
    returncode, _, stderr = demo_stopped_when([*SMALL, "--out", str(tmp_path)], collecting)
    assert returncode == 130, stderr
    (run_dir,) = tmp_path.iterdir()
    finished = {p.name: p.read_text() for p in (run_dir / "jobs").glob("*.json")}
    assert "curve-MPPI_H32_TRUE_model.json" in finished and not any("learn" in name for name in finished)
    kept_segments = {p: p.stat().st_mtime_ns for p in (run_dir / "baselines").rglob("*.mcap")}

    assert main(["--resume", str(run_dir), "--seeds", "3"]) == 2  # its own settings, nothing else
    assert "--resume" in capsys.readouterr().err
    assert main(["--resume", str(run_dir)]) == 0
    for name, text in finished.items():  # the finished jobs were not run again
        assert (run_dir / "jobs" / name).read_text() == text
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "baselines").rglob("*.mcap")} == kept_segments
    results = json.loads((run_dir / "results.json").read_text())
    assert [len(r["curve"]) for r in results["learners"]["MPQ"]] == [1]  # MPQ seed 0 ran again, whole
    (segments, problems) = verified_segments(run_dir / "MPQ" / "seed0" / "data" / "robot")
    assert len(segments) == 2 and not problems
    assert main(["--resume", str(run_dir)]) == 2  # a complete run is not resumed


@pytest.mark.long
def test_the_demo_over_a_ray_cluster_gives_the_run_it_gives_without_one(cluster, small_run, tmp_path, capsys):
    """Collection and evaluation on a fleet of the cluster's stand-ins, the targets on its workers."""
    pytest.importorskip("ray", reason="the cluster extra (Ray) is not installed")
    assert main([*SMALL, "--ray", cluster, "--fleet", "2", "--out", str(tmp_path / "ray")]) == 0
    (there,) = (tmp_path / "ray").iterdir()
    assert numbers(there) == numbers(small_run)
    segments, problems = verified_segments(there / "MPQ" / "seed0" / "data" / "robot")
    assert len(segments) == 2 and problems == []
    capsys.readouterr()
    assert main([*SMALL, "--ray", cluster, "--fleet", "3", "--out", str(tmp_path / "more")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --ray {cluster}: the cluster has 4 CPUs; --fleet 3 needs 6") and err.count("\n") == 1
    assert not (tmp_path / "more").exists()


@pytest.mark.long
def test_a_learner_stopped_in_its_second_round_goes_on_from_its_first_as_if_never_stopped(tmp_path):
    two_rounds = [*SMALL, "--iterations", "2"]
    data = tmp_path / "stopped"
    # stopped once round 2's first episode is listed
    in_round_2 = lambda: len(list(data.glob("*/MPQ/seed0/data/robot/*.mcap"))) >= 3  # noqa: E731
    returncode, _, stderr = demo_stopped_when([*two_rounds, "--out", str(data)], in_round_2)
    assert returncode == 130, stderr
    (run_dir,) = data.iterdir()
    assert json.loads((run_dir / "MPQ" / "seed0" / "progress.json").read_text())["iteration"] == 1
    assert main(["--resume", str(run_dir)]) == 0

    assert main([*two_rounds, "--out", str(tmp_path / "whole")]) == 0  # the same settings, never stopped
    (whole,) = (tmp_path / "whole").iterdir()
    assert numbers(run_dir) == numbers(whole)
    names = [e["segment"] for e in read_manifest(run_dir / "MPQ" / "seed0" / "data" / "robot")]
    assert names == [f"{i:06d}.mcap" for i in range(1, 5)]  # round 2's cut episodes dropped, run again once


def test_an_evaluation_stopped_before_keeps_its_episodes_but_the_last_and_gives_the_whole_runs_numbers(tmp_path):
    from offboard.demo import evaluate

    cfg, mppi = DemoConfig(), dict(H=8)
    evaluate(cfg, tmp_path / "stopped", "MPPI", 2, 7, "", mppi, stop=Stop())  # as far as a stop let it come
    first, last = (p.stat().st_mtime_ns for p in sorted((tmp_path / "stopped" / "MPPI").glob("*.mcap")))
    again = evaluate(cfg, tmp_path / "stopped", "MPPI", 4, 7, "", mppi, stop=Stop())
    whole = evaluate(cfg, tmp_path / "whole", "MPPI", 4, 7, "", mppi, stop=Stop())
    assert again["costs"] == whole["costs"] and len(whole["costs"]) == 4
    segments = sorted((tmp_path / "stopped" / "MPPI").glob("*.mcap"))
    assert segments[0].stat().st_mtime_ns == first  # kept, not rerun
    assert segments[1].stat().st_mtime_ns != last  # the last one (a stop may have cut it short) ran again
    assert [e["segment"] for e in read_manifest(tmp_path / "stopped" / "MPPI")] == [p.name for p in segments]


@pytest.mark.parametrize("config", [None, "{", "[1, 2]", '{"iterations": "abc"}', '{"iterations": null}'])
def test_resuming_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys, config):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if config is not None:
        (run_dir / "config.json").write_text(config)
    assert main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume {run_dir}: not a demo run folder") and err.count("\n") == 1, err
    assert sorted(p.name for p in run_dir.iterdir()) == ([] if config is None else ["config.json"])
