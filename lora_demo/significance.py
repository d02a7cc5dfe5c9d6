"""Is the gain real? Two models compared on the same test reviews, review by review.

The reviews LoRA fixed (baseline wrong, tuned right) and broke (the reverse) are the discordant pairs of
McNemar's test; its exact form is a binomial test on them (scipy). Bootstrap intervals resample the test
reviews (scipy's `bootstrap`, paired so a review keeps its label and prediction together).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000


def flips(y_true, before, after) -> dict[str, list[int]]:
    """Indices of the reviews the second model fixed and broke (unmapped answers count as wrong)."""
    y_true, before, after = (np.asarray(v, dtype=int) for v in (y_true, before, after))
    right_before, right_after = before == y_true, after == y_true
    return {
        "fixed": np.flatnonzero(~right_before & right_after).tolist(),
        "broken": np.flatnonzero(right_before & ~right_after).tolist(),
    }


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided p-value of McNemar's exact test: are fixes and breaks equally likely?"""
    if fixed + broken == 0:
        return 1.0
    return float(stats.binomtest(fixed, fixed + broken, 0.5).pvalue)


def _accuracy(y, p, axis=-1):
    return (y == p).mean(axis=axis)


def _f1(y, p, axis=-1):
    """F1 of the positive class, vectorised over bootstrap resamples."""
    tp = ((p == 1) & (y == 1)).sum(axis=axis)
    wrong = ((p == 1) & (y != 1)).sum(axis=axis) + ((p != 1) & (y == 1)).sum(axis=axis)
    denominator = 2 * tp + wrong
    return np.divide(2 * tp, denominator, out=np.zeros(np.shape(tp), dtype=float), where=denominator > 0)


METRICS = {"accuracy": _accuracy, "f1": _f1}


def _percentile_interval(data: tuple, statistic, seed: int) -> list[float]:
    """The 95% paired percentile-bootstrap interval of `statistic` over the test reviews (`data`'s arrays)."""
    with warnings.catch_warnings():  # identical resamples (e.g. all right) are a point, not an error
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            data,
            statistic,
            paired=True,
            vectorized=True,
            n_resamples=RESAMPLES,
            confidence_level=CONFIDENCE,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    value = float(statistic(*data))
    low, high = (value if np.isnan(end) else float(end) for end in result.confidence_interval)
    return [round(low, 4), round(high, 4)]


def bootstrap_interval(y_true, predicted, metric: str, seed: int = 0) -> list[float]:
    """The 95% percentile-bootstrap interval of `metric` ("accuracy" or "f1") over the test reviews."""
    data = (np.asarray(y_true, dtype=int), np.asarray(predicted, dtype=int))
    return _percentile_interval(data, METRICS[metric], seed)


def _accuracy_gain(y, before, after, axis=-1):
    return (after == y).mean(axis=axis) - (before == y).mean(axis=axis)


def gain_interval(y_true, before, after, seed: int = 0) -> list[float]:
    """The 95% paired-bootstrap interval of the accuracy difference `after` - `before` on the same reviews.

    Each resample draws test reviews with replacement and keeps both models' answers to a review together, so
    the interval reflects how the two models differ on the same reviews, not two independent spreads.
    """
    data = tuple(np.asarray(v, dtype=int) for v in (y_true, before, after))
    return _percentile_interval(data, _accuracy_gain, seed)


def compare_models(y_true, before, after, seed: int = 0) -> dict:
    """Flips, McNemar's exact test and bootstrap intervals of the baseline (`before`) and LoRA (`after`).

    Returns:
        n, fixed / broken (indices), n_fixed / n_broken, p_value, accuracy_gain, gain_interval (95% paired
        bootstrap interval of the gain), the intervals of accuracy and F1 for both models, and `verdict`, the
        result in plain words.
    """
    y_true = [int(y) for y in y_true]
    changed = flips(y_true, before, after)
    n_fixed, n_broken = len(changed["fixed"]), len(changed["broken"])
    p_value = mcnemar_exact(n_fixed, n_broken)
    gain = float(_accuracy(np.asarray(after), np.asarray(y_true)) - _accuracy(np.asarray(before), np.asarray(y_true)))
    intervals = {
        metric: {
            "baseline": bootstrap_interval(y_true, before, metric, seed),
            "finetuned": bootstrap_interval(y_true, after, metric, seed),
        }
        for metric in METRICS
    }
    return {
        "n": len(y_true),
        **changed,
        "n_fixed": n_fixed,
        "n_broken": n_broken,
        "p_value": p_value,
        "accuracy_gain": round(gain, 4),
        "gain_interval": gain_interval(y_true, before, after, seed),
        "intervals": intervals,
        "confidence": CONFIDENCE,
        "verdict": verdict(len(y_true), gain, n_fixed, n_broken, p_value),
    }


def verdict(n: int, gain: float, n_fixed: int, n_broken: int, p_value: float, alpha: float = 0.05) -> str:
    """The comparison in plain words."""
    change = "gain" if gain >= 0 else "loss"
    real = "is" if p_value < alpha else "is not"
    return (
        f"With {n} test reviews, the accuracy {change} of {abs(gain):.3f} {real} distinguishable from chance "
        f"(McNemar's exact test, p = {p_value:.3g}): LoRA fixed {n_fixed} reviews the baseline got wrong "
        f"and broke {n_broken} it got right."
    )
