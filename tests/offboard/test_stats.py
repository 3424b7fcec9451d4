"""The intervals every claim carries: a t-interval for a mean, a Wilson interval for a success rate, and for a
learner over several training seeds intervals that take the seed as the unit (the seeds ran the same starts)."""

from __future__ import annotations

import numpy as np
import pytest

from offboard.stats import mean_interval, ratio_interval, seeds_cost_interval, seeds_success_interval


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


def test_over_several_seeds_the_ratio_interval_is_students_t_over_the_seeds_ratios():
    reference = np.full(50, 100.0)
    ours = np.stack([reference * r for r in (1.324, 0.980, 0.977)])  # one seed learned worse
    r = ratio_interval(ours, reference)
    assert (r["low"], r["high"]) == pytest.approx(
        (mean_interval([1.324, 0.980, 0.977])["low"], mean_interval([1.324, 0.980, 0.977])["high"])
    )
    assert r["high"] > 1.5  # a bootstrap over 3 seeds stopped at the worst seed's 1.324
    rng = np.random.default_rng(2)
    reference = rng.uniform(100, 1000, size=50)
    by_start = np.stack([reference * rng.uniform(0.7, 1.3, size=50)] * 3)  # seeds agree, starts do not
    r = ratio_interval(by_start, reference)
    assert r["high"] - r["low"] > 0.05  # not a point: other starts would give another ratio


def test_the_ratio_interval_over_three_seeds_covers_the_mean_ratio_about_95_percent_of_the_time():
    """Simulated runs: 3 seeds whose mean ratio varies (sd 0.1), all on the same 50 starts (sd 20 % each)."""
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(400):
        reference = rng.uniform(100, 1000, size=50)
        seed_ratios = 1.0 + 0.1 * rng.standard_normal(3)
        ours = seed_ratios[:, None] * reference * (1 + 0.2 * rng.standard_normal((3, 50)))
        r = ratio_interval(ours, reference)
        covered += r["low"] <= 1.0 <= r["high"]
    assert covered / 400 >= 0.9  # the paired bootstrap over seeds and starts covered 0.82 of these


def test_a_learners_cost_and_success_intervals_take_the_seed_as_the_unit():
    costs = [[100.0] * 50, [150.0] * 50, [110.0] * 50]  # the starts agree, the seeds do not
    over_seeds = mean_interval([100.0, 150.0, 110.0])
    assert [seeds_cost_interval(costs)[k] for k in ("mean", "low", "high")] == [over_seeds[k] for k in over_seeds][:3]
    starts = np.linspace(50.0, 500.0, 50)  # the seeds agree, the starts do not: the starts' spread counts
    assert seeds_cost_interval([starts] * 3)["low"] == pytest.approx(mean_interval(starts)["low"])
    assert seeds_cost_interval(costs[:1]) == mean_interval(costs[0])  # one seed: its episodes
    apart = seeds_success_interval([[True] * 93 + [False] * 7, [True] * 86 + [False] * 14, [True] * 86 + [False] * 14])
    assert apart["mean"] == pytest.approx(0.8833, abs=1e-4) and apart["low"] == pytest.approx(0.7829, abs=1e-3)
    agreeing = seeds_success_interval([[True] * 50] * 3)  # seeds that agree: still the episodes' Wilson interval
    assert agreeing["high"] == 1.0 and agreeing["low"] == pytest.approx(0.9747, abs=1e-3)


def test_costs_from_other_starts_are_refused():
    with pytest.raises(ValueError, match="evaluate both on the same starts"):
        ratio_interval(np.ones((3, 50)), np.ones(40))


def test_the_final_table_shows_each_training_seeds_ratio_beside_the_pooled_one():
    from offboard.demo import add_intervals, table

    reference = np.array([100.0, 200.0])
    seeds = [reference * 1.0, reference * 1.5]  # one seed as good as the reference, one 50 % worse
    rows = {
        "MPPI TRUE": dict(costs=[reference.tolist()], successes=[[True, True]]),
        "MPQ": dict(costs=[s.tolist() for s in seeds], successes=[[True, True], [True, False]]),
    }
    add_intervals(rows, "MPPI TRUE")
    final = {"uniform": dict(episodes=2, seed=1, reference="MPPI TRUE", rows=rows)}
    lines = table(final).splitlines()
    assert "| ratio per seed |" in lines[3]
    assert lines[-2].startswith("| MPPI TRUE | 1 |") and "|  |" in lines[-2]  # one seed: nothing to spread
    assert "| 1 (the reference) |" in lines[-2]  # its ratio to itself is no finding: no interval [1.000, 1.000]
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


def test_one_value_is_printed_without_a_95_percent_interval():
    from offboard.stats import format_interval

    one = mean_interval([1170.5])
    assert format_interval(one["mean"], one["low"], one["high"], 1, one["n"]) == "1170.5 (one value: no interval)"
    two = mean_interval([1.0, 3.0])
    assert format_interval(two["mean"], two["low"], two["high"], 1, two["n"]).startswith("2.0 [-10.7, ")
