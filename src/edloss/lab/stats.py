"""Two-sample statistics for the ablation: Mann–Whitney U, a bootstrap interval, Holm's correction.

Everything takes plain lists of floats (one value per seed) and returns JSON-ready dicts, so
the ablation summary can store them as they are. ``None`` in a sample is dropped first (a run
that has no value for the metric); a test with an empty side returns ``p = None``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np


def _clean(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def describe(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """n, mean, sample std, median, min, max of the finite values."""
    v = _clean(values)
    if not v:
        return {"n": 0, "mean": None, "std": None, "median": None, "min": None, "max": None}
    return {"n": len(v), "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "median": statistics.median(v), "min": min(v), "max": max(v)}


def mann_whitney(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, float | int | None]:
    """Two-sided Mann–Whitney U test of a against b.

    Returns U (of a), the p-value (exact for small untied samples, else the normal approximation
    with tie correction, as scipy chooses), and the common-language effect size
    P(A > B) + P(A = B)/2 = U / (n_a n_b): 0.5 means no tendency, 1 means every a beats every b.
    """
    a, b = _clean(a), _clean(b)
    out: dict[str, float | int | None] = {"n_a": len(a), "n_b": len(b), "u": None, "p": None, "prob_a_greater": None}
    if not a or not b:
        return out
    if len(set(a) | set(b)) == 1:  # every value tied: no evidence of any difference
        out.update(u=len(a) * len(b) / 2, p=1.0, prob_a_greater=0.5)
        return out
    from scipy.stats import mannwhitneyu

    res = mannwhitneyu(a, b, alternative="two-sided")
    u = float(res.statistic)
    out.update(u=u, p=float(res.pvalue), prob_a_greater=u / (len(a) * len(b)))
    return out


def wilcoxon_paired(pairs: Sequence[tuple[float | None, float | None]]) -> dict[str, float | int | None]:
    """Two-sided Wilcoxon signed-rank test on paired values (a_i, b_i); pairs with a None dropped.

    Used where the two arms of a pair share a seed, hence the same initial population and the
    same synthetic batches (common random numbers), so a - b removes that shared noise.
    """
    kept = [(float(x), float(y)) for x, y in pairs if x is not None and y is not None
            and math.isfinite(float(x)) and math.isfinite(float(y))]
    out: dict[str, float | int | None] = {"n": len(kept), "statistic": None, "p": None, "median_diff": None}
    if not kept:
        return out
    diffs = [x - y for x, y in kept]
    out["median_diff"] = statistics.median(diffs)
    if all(d == 0 for d in diffs):
        out.update(statistic=0.0, p=1.0)
        return out
    from scipy.stats import wilcoxon

    res = wilcoxon([x for x, _ in kept], [y for _, y in kept], alternative="two-sided")
    out.update(statistic=float(res.statistic), p=float(res.pvalue))
    return out


def bootstrap_mean_diff(a: Sequence[float | None], b: Sequence[float | None], confidence: float = 0.95,
                        resamples: int = 10_000, seed: int = 0) -> dict[str, float | int | None]:
    """Mean(a) - mean(b) with a percentile bootstrap interval (each side resampled on its own).

    Seeded, so the same runs give the same interval. ``excludes_zero`` says whether the interval
    lies entirely on one side of 0.
    """
    a_arr, b_arr = np.asarray(_clean(a)), np.asarray(_clean(b))
    out: dict[str, float | int | bool | None] = {"diff": None, "lo": None, "hi": None, "confidence": confidence,
                                                "resamples": resamples, "excludes_zero": None}
    if a_arr.size == 0 or b_arr.size == 0:
        return out
    rng = np.random.default_rng(seed)
    ma = a_arr[rng.integers(0, a_arr.size, (resamples, a_arr.size))].mean(1)
    mb = b_arr[rng.integers(0, b_arr.size, (resamples, b_arr.size))].mean(1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(ma - mb, [tail, 1 - tail])
    out.update(diff=float(a_arr.mean() - b_arr.mean()), lo=float(lo), hi=float(hi),
               excludes_zero=bool(lo > 0 or hi < 0))
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (family-wise error), ``None`` kept in place."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(indexed)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def band(rows: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    """Per-position mean, sample std, 25% and 75% quantiles, min and max over equal-length rows."""
    arr = np.asarray(rows, dtype=float)
    if arr.ndim != 2 or arr.shape[0] == 0:
        return {k: [] for k in ("mean", "std", "q25", "q75", "min", "max")}
    std = arr.std(0, ddof=1) if arr.shape[0] > 1 else np.zeros(arr.shape[1])
    q25, q75 = np.quantile(arr, [0.25, 0.75], axis=0)
    return {"mean": arr.mean(0).tolist(), "std": std.tolist(), "q25": q25.tolist(), "q75": q75.tolist(),
            "min": arr.min(0).tolist(), "max": arr.max(0).tolist()}
