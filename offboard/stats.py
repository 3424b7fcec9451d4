"""Claims with their uncertainty: a mean with its 95 % t-interval, a success rate with its 95 % Wilson interval,
and a cost ratio to a reference (paired: every planner of a comparison ran from the same starts). A learner's
numbers over several training seeds take the seed as the unit: the seeds ran the same starts, so their
episodes are not independent draws."""

from __future__ import annotations

import numpy as np
from scipy import special  # the t and normal quantiles; scipy.stats would take a second to import

LEVEL = 0.95


def mean_interval(values) -> dict:
    """Mean and its 95 % Student-t interval over independent episodes (one value: low and high are the mean, n=1)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(np.mean(x))
    if len(x) < 2:
        return dict(mean=mean, low=mean, high=mean, n=len(x))
    half = float(special.stdtrit(len(x) - 1, 0.5 + LEVEL / 2) * np.std(x, ddof=1) / np.sqrt(len(x)))
    return dict(mean=mean, low=mean - half, high=mean + half, n=len(x))


def success_interval(successes) -> dict:
    """The success rate over independent episodes and its 95 % Wilson score interval: inside [0, 1], and not a
    point when every episode succeeded or failed (a t-interval on 0/1 outcomes is both)."""
    x = np.asarray(successes, dtype=bool)
    if x.size == 0:
        raise ValueError("a success rate of no episodes")
    n, rate = len(x), float(np.mean(x))
    z = float(special.ndtri(0.5 + LEVEL / 2))
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return dict(mean=rate, low=float(max(0.0, centre - half)), high=float(min(1.0, centre + half)), n=n)


def ratio_interval(ours, reference, draws: int = 10_000, seed: int = 0) -> dict:
    """mean(ours) / mean(reference) and its 95 % interval.

    ours: (seeds, starts) episode costs, one row per training seed, every row from the same starts as reference
    (starts,). Two spreads, and the interval is the wider of the two: the training seeds' (the Student-t interval
    over the seeds' ratios, n = seeds, with two or more) and the starts' (a paired percentile bootstrap over the
    starts of the seeds' mean). The seeds ran the same starts, so their episodes are not independent draws: a
    bootstrap over 3 seeds cannot reach past the worst of them (in the simulation of tests/offboard/test_stats.py
    it covered the mean ratio 0.82 of the time), and the t-interval alone does not see which starts were drawn."""
    ours = np.atleast_2d(np.asarray(ours, dtype=np.float64))
    reference = np.asarray(reference, dtype=np.float64)
    n_seeds, n_starts = ours.shape
    if reference.shape != (n_starts,):
        raise ValueError(f"reference has {reference.shape} costs, ours {ours.shape}: evaluate both on the same starts")
    starts = np.random.default_rng(seed).integers(0, n_starts, size=(draws, n_starts))
    ratios = ours.mean(axis=0)[starts].mean(axis=1) / reference[starts].mean(axis=1)
    low, high = np.percentile(ratios, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    interval = dict(low=float(low), high=float(high))
    if n_seeds >= 2:
        interval = wider(interval, mean_interval(ours.mean(axis=1) / reference.mean()))
    return dict(ratio=float(ours.mean() / reference.mean()), **interval, seeds=n_seeds, starts=n_starts)


def seeds_cost_interval(costs) -> dict:
    """A learner's mean episode cost over (seeds, starts) and its 95 % interval: over one seed's episodes, or with
    two or more seeds the wider of the t-intervals over the seeds' means (n = seeds) and over the starts' means
    across the seeds (n = starts): the seeds ran the same starts, so both spreads count."""
    costs = np.atleast_2d(np.asarray(costs, dtype=np.float64))
    if len(costs) < 2:
        return mean_interval(costs[0])
    over_seeds = mean_interval(costs.mean(axis=1))
    return dict(
        mean=over_seeds["mean"], **wider(over_seeds, mean_interval(costs.mean(axis=0))), n=costs.size, seeds=len(costs)
    )


def seeds_success_interval(successes) -> dict:
    """A learner's success rate over (seeds, starts) and its 95 % interval: for one seed the Wilson interval over
    its episodes; for two or more the wider of the t-interval over the seeds' rates (inside [0, 1]) and the Wilson
    interval of all episodes (seeds that agree by chance do not make the rate a point)."""
    successes = np.atleast_2d(np.asarray(successes, dtype=bool))
    pooled = success_interval(np.ravel(successes))
    if len(successes) < 2:
        return dict(pooled, seeds=1)
    over_seeds = mean_interval(successes.mean(axis=1))
    inside = dict(low=max(0.0, over_seeds["low"]), high=min(1.0, over_seeds["high"]))  # a rate's bounds
    return dict(mean=pooled["mean"], **wider(pooled, inside), n=pooled["n"], seeds=len(successes))


def wider(a: dict, b: dict) -> dict:
    """The interval that holds both intervals a and b ({"low", "high"}): where two spreads count, the larger of each
    side."""
    return dict(low=float(min(a["low"], b["low"])), high=float(max(a["high"], b["high"])))


def format_stat(stat: dict, digits: int = 3) -> str:
    """A mean or rate from the functions above ({"mean", "low", "high", "n"}) as format_interval writes it."""
    return format_interval(stat["mean"], stat["low"], stat["high"], digits, stat["n"])


def format_interval(value: float, low: float, high: float, digits: int = 3, n: int | None = None) -> str:
    """'value [low, high]'; for one value (n=1), which has no interval, says so."""
    if n is not None and n < 2:
        return f"{value:.{digits}f} (one value: no interval)"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
