"""Claims with their uncertainty: a mean with its 95 % t-interval, a success rate with its 95 % Wilson interval,
and a cost ratio to a reference with a bootstrap interval that resamples training seeds and evaluation starts
(paired: every planner of a comparison ran from the same starts)."""

from __future__ import annotations

import numpy as np
from scipy import special  # the t and normal quantiles; scipy.stats would take a second to import

LEVEL = 0.95


def mean_interval(values) -> dict:
    """Mean and its 95 % Student-t interval over independent episodes."""
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
    n, rate = len(x), float(np.mean(x))
    z = float(special.ndtri(0.5 + LEVEL / 2))
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return dict(mean=rate, low=float(max(0.0, centre - half)), high=float(min(1.0, centre + half)), n=n)


def ratio_interval(ours, reference, draws: int = 10_000, seed: int = 0) -> dict:
    """mean(ours) / mean(reference) and its 95 % percentile-bootstrap interval.

    ours: (seeds, starts) episode costs, one row per training seed, every row from the same starts as
    reference (starts,). Each draw resamples the seeds and, independently, the starts (the same starts
    for ours and the reference), so the interval holds for a new training seed on new starts."""
    ours = np.atleast_2d(np.asarray(ours, dtype=np.float64))
    reference = np.asarray(reference, dtype=np.float64)
    n_seeds, n_starts = ours.shape
    if reference.shape != (n_starts,):
        raise ValueError(f"reference has {reference.shape} costs, ours {ours.shape}: evaluate both on the same starts")
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(draws, n_seeds))
    starts = rng.integers(0, n_starts, size=(draws, n_starts))
    ours_mean = ours[seeds[:, :, None], starts[:, None, :]].mean(axis=(1, 2))
    ratios = ours_mean / reference[starts].mean(axis=1)
    low, high = np.percentile(ratios, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return dict(
        ratio=float(ours.mean() / reference.mean()), low=float(low), high=float(high), seeds=n_seeds, starts=n_starts
    )


def format_interval(value: float, low: float, high: float, digits: int = 3) -> str:
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
