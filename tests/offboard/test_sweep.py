"""A sweep on Ray Tune: every (value, seed) trial a whole train-and-evaluate on a cluster the test starts, with the
numbers the same trial gives run directly; one table and one plot."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray", reason="the cluster extra (Ray) is not installed")

from offboard.sweep import main, trial  # noqa: E402


@pytest.mark.long
def test_a_sweep_runs_each_value_and_seed_on_tune_and_reports_one_table(cluster, tmp_path, capsys):
    small = ["--task", "pendulum", "--iterations", "1", "--episodes-per-iteration", "2", "--eval-episodes", "1"]
    small += ["--updates-per-iteration", "20", "--final-episodes", "2"]
    args = [*small, "--param", "H", "--values", "4,8", "--sweep-seeds", "1", "--ray", cluster, "--out", str(tmp_path)]
    assert main(args) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = json.loads((run_dir / "sweep.json").read_text())
    assert [(t["value"], t["seed"]) for t in results["trials"]] == [(4, 0), (8, 0)]
    assert [r["value"] for r in results["rows"]] == [4, 8] and (run_dir / "sweep.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "| H | seeds | mean episode cost [95 %] | success [95 %] |" in out and "| 8 | 1 |" in out

    # The trial Tune ran is the demo's own learning and evaluation: run here, it gives the same episodes.
    demo = dict(results["config"], out=str(tmp_path / "direct"))
    direct = trial(dict(demo=demo, param="horizon", value=8, seed=0, out=str(tmp_path / "direct")))
    assert direct["costs"] == results["trials"][1]["costs"]


def test_a_setting_that_cannot_be_swept_is_one_line(tmp_path, capsys):
    assert main(["--param", "lr", "--values", "1,2", "--out", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.startswith("error: --param lr: sweep one of horizon")
    assert main(["--param", "H", "--values", "4,x", "--out", str(tmp_path / "runs")]) == 2
    assert "--values 4,x: give ints" in capsys.readouterr().err
    assert main(["--param", "H", "--values", "4,8,4", "--out", str(tmp_path / "runs")]) == 2
    assert "--values 4,8,4: 4 given twice; give each value once" in capsys.readouterr().err
    assert main(["--param", "H", "--values", "4", "--ray", "garbage:xx", "--out", str(tmp_path / "runs")]) == 2
    assert "--ray garbage:xx: give auto" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_the_help_shows_what_a_sweep_does_where_it_differs_from_the_demo(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "--final-episodes FINAL_EPISODES new starts per trial in the final evaluation, the sweep's numbers (1 or "
        "more) (default: 20)" in text
    )
    assert "(0: none)" not in text and "sweep.md, sweep.png, sweep.json" in text


def test_a_values_row_over_several_seeds_takes_the_seed_as_the_unit():
    from offboard.stats import mean_interval
    from offboard.sweep import table

    trials = [dict(value=8, seed=s, costs=[c] * 20, successes=[True] * 20) for s, c in ((0, 100.0), (1, 160.0))]
    text, (row,) = table("H", [8], trials)
    assert row["seeds"] == 2 and row["cost"]["low"] == mean_interval([100.0, 160.0])["low"]  # not 40 episodes' spread
    assert "| 8 | 2 | 130.0 [" in text
