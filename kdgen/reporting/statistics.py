"""The statistics of seeds: paired differences, t intervals, detectable effects, slopes.

Every comparison kdgen reports pairs models by seed (same data order, same initial weights within a
seed), so the test is a paired t-test and the interval a t interval of the mean difference. scipy is
imported on first use: most processes (training workers) never need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

ALPHA = 0.05


@dataclass(frozen=True)
class Paired:
    """``a − b`` over the seeds both have: count, mean, sample std and a two-sided paired t-test's p.

    ``p`` is NaN below two seeds or when every difference is identical (the t statistic is undefined).
    """

    n: int
    mean: float
    std: float
    p: float

    @property
    def half_width(self) -> float:
        """Half the 95 % t interval of the mean difference (NaN below two seeds)."""
        return t_half_width(self.std, self.n) if self.n >= 2 else math.nan

    @property
    def detectable(self) -> float:
        """The smallest true difference these seeds detect with 80 % power (:func:`detectable_effect`)."""
        return detectable_effect(self.std, self.n)


def paired(a: dict[int, float], b: dict[int, float]) -> Paired | None:
    """``a − b`` paired by seed (the keys); None without a common seed."""
    import numpy as np

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = np.array([a[s] - b[s] for s in seeds])
    p = math.nan
    if len(seeds) >= 2 and np.ptp(diffs) > 1e-9:
        from scipy import stats

        p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return Paired(len(seeds), float(diffs.mean()), float(diffs.std(ddof=1)) if len(seeds) > 1 else 0.0, p)


def t_half_width(std: float, n: int, alpha: float = ALPHA) -> float:
    """Half the width of the two-sided (1 − alpha) t interval of a mean over ``n`` values with sample std ``std``."""
    from scipy import stats

    return float(stats.t.ppf(1 - alpha / 2, n - 1) * std / math.sqrt(n))


def detectable_effect(std: float, n: int, power: float = 0.8, alpha: float = ALPHA) -> float:
    """The smallest true mean difference a two-sided paired t-test over ``n`` seeds detects with probability
    ``power`` at level ``alpha``, given the differences' sample std: ``(t_(1-alpha/2) + t_power) * std / sqrt(n)``
    with n − 1 degrees of freedom (NaN below two seeds). What a null result with these seeds can rule out."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    from scipy import stats

    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * std / math.sqrt(n))


def mean_interval(values: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean, 95 % t interval (low, high) and the one-sample t-test's p against 0 (NaNs when undefined)."""
    import numpy as np

    data = np.array(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2 or np.ptp(data) < 1e-12:
        return mean, math.nan, math.nan, math.nan
    from scipy import stats

    half = t_half_width(float(data.std(ddof=1)), len(data))
    return mean, mean - half, mean + half, float(stats.ttest_1samp(data, 0.0).pvalue)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ``ys`` against ``xs``."""
    import numpy as np

    return float(np.polyfit(xs, ys, 1)[0])
