"""The intervals every claim carries: a t-interval for a mean, a bootstrap interval for a cost ratio that
resamples training seeds and starts together."""

from __future__ import annotations

import numpy as np
import pytest

from offboard.stats import mean_interval, ratio_interval


def test_the_mean_interval_is_students_t():
    interval = mean_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * np.std([1, 2, 3, 4], ddof=1) / 2  # t(0.975, 3)
    assert interval["mean"] == 2.5 and interval["n"] == 4
    assert interval["low"] == pytest.approx(2.5 - half) and interval["high"] == pytest.approx(2.5 + half)


def test_a_ten_percent_worse_planner_on_the_same_starts_is_a_ratio_of_one_point_one_with_a_tight_interval():
    rng = np.random.default_rng(0)
    reference = rng.uniform(100, 1000, size=50)  # starts differ a lot; the ratio on the same starts does not
    ours = np.stack([1.1 * reference, 1.1 * reference])
    r = ratio_interval(ours, reference)
    assert r["ratio"] == pytest.approx(1.1) and r["low"] == pytest.approx(1.1) and r["high"] == pytest.approx(1.1)
    assert (r["seeds"], r["starts"]) == (2, 50)


def test_a_seed_that_learned_worse_widens_the_interval():
    rng = np.random.default_rng(1)
    reference = rng.uniform(100, 200, size=50)
    agreeing = ratio_interval(np.stack([reference, reference, reference]), reference)
    one_bad = ratio_interval(np.stack([reference, reference, 1.5 * reference]), reference)
    assert agreeing["high"] == pytest.approx(1.0)
    assert one_bad["low"] < one_bad["ratio"] < one_bad["high"] and one_bad["high"] >= 1.4  # all three could be bad


def test_costs_from_other_starts_are_refused():
    with pytest.raises(ValueError, match="evaluate both on the same starts"):
        ratio_interval(np.ones((3, 50)), np.ones(40))


def test_the_final_table_shows_each_training_seeds_ratio_beside_the_pooled_one():
    from offboard.demo import table

    reference = np.array([100.0, 200.0])
    seeds = [reference * 1.0, reference * 1.5]  # one seed as good as the reference, one 50 % worse
    rows = {
        "MPPI TRUE": dict(costs=[reference.tolist()], successes=[[True, True]]),
        "MPQ": dict(costs=[s.tolist() for s in seeds], successes=[[True, True], [True, False]]),
    }
    for row in rows.values():
        row["cost"] = mean_interval(np.ravel(row["costs"]))
        row["success"] = mean_interval(np.ravel(row["successes"]).astype(float))
        row["ratio"] = ratio_interval(row["costs"], reference)
    final = {"uniform": dict(episodes=2, seed=1, reference="MPPI TRUE", rows=rows)}
    lines = table(final).splitlines()
    assert "| ratio per seed |" in lines[3]
    assert lines[-2].startswith("| MPPI TRUE | 1 |") and "|  |" in lines[-2]  # one seed: nothing to spread
    assert lines[-1].startswith("| MPQ | 2 |") and "| 1.000, 1.500 |" in lines[-1] and "1.250 [" in lines[-1]


def test_a_success_rate_carries_a_wilson_interval_inside_zero_and_one():
    from offboard.stats import success_interval

    every = success_interval([True] * 50)  # 50 of 50: not a point, and never past 1
    assert every["mean"] == 1.0 and every["high"] == 1.0 and every["low"] == pytest.approx(0.9287, abs=1e-4)
    most = success_interval([True] * 49 + [False])  # a t-interval gave [0.94, 1.02]
    assert most["low"] == pytest.approx(0.8950, abs=1e-4) and most["high"] == pytest.approx(0.9965, abs=1e-4)
    paper = success_interval([True] * 264 + [False] * 36)  # 0.88 of 300 episodes
    assert (paper["low"], paper["high"]) == pytest.approx((0.8383, 0.9120), abs=1e-4)
    assert success_interval([False] * 10)["low"] == 0.0
