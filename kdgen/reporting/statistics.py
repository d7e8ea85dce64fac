"""The statistics of seeds: paired differences, t intervals, detectable effects, slopes.

Every comparison kdgen reports pairs two arms' models by seed index, and the pairing is real: the data split
(and any ``data.train_per_class`` subset) depends on ``data.split_seed`` alone, and each unit's random stream
(initial weights, batch order, augmentation) on (seed, generation) only, the same for every arm
(:attr:`kdgen.running.generations.Unit.stream_seed`). So the strict and tolerant models of a seed start from the same
weights and see the same batches: common random numbers, which cancel in the paired difference (measured: a third
of the per-seed spread of tolerant − strict, docs/study/common-random-numbers.md). The differences are still
independent from seed to seed, so the paired t-test and the t interval of the mean difference are valid.

When every seed gives the same difference (common at the accuracy ceiling of a small test set, where one
image is the whole difference), the t statistic is undefined: :class:`Paired` says so (``no_spread``) and
offers the exact sign test's p instead. scipy is imported on first use: most processes (training workers)
never need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

ALPHA = 0.05
SAME = 1e-9  # differences closer than this are the same (float noise of a difference of percentages)


@dataclass(frozen=True)
class Paired:
    """``a − b`` over the seeds both have: count, mean, sample std and a two-sided paired t-test's p.

    ``p`` is NaN below two seeds or when every difference is the same (``no_spread``: the t statistic is
    undefined; see :attr:`sign_p`).
    """

    n: int
    mean: float
    std: float
    p: float

    @property
    def no_spread(self) -> bool:
        """Two seeds or more and the same difference on every one: no seed-to-seed spread, so no t-test,
        no t interval and no detectable effect."""
        return self.n >= 2 and self.std < SAME

    @property
    def identical(self) -> bool:
        """No spread and no difference: both sides score the same on every seed."""
        return self.no_spread and abs(self.mean) < SAME

    @property
    def sign_p(self) -> float:
        """With :attr:`no_spread` and a nonzero difference, the exact two-sided sign test's p: all ``n``
        differences have the same sign, which has probability ``2 · 0.5^n`` when either sign is equally likely
        (the smallest p ``n`` seeds can give; below 0.05 from 6 seeds on). NaN otherwise."""
        if not self.no_spread or self.identical:
            return math.nan
        return min(1.0, 2 * 0.5 ** self.n)

    @property
    def half_width(self) -> float:
        """Half the 95 % t interval of the mean difference (NaN below two seeds or without spread)."""
        return t_half_width(self.std, self.n) if self.n >= 2 and not self.no_spread else math.nan

    @property
    def detectable(self) -> float:
        """The smallest true difference these seeds detect with 80 % power (:func:`detectable_effect`); NaN
        without spread, where a sample std of zero estimates nothing."""
        return math.nan if self.no_spread else detectable_effect(self.std, self.n)


def paired(a: dict[int, float], b: dict[int, float]) -> Paired | None:
    """``a − b`` paired by seed (the keys); None without a common seed."""
    import numpy as np

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = np.array([a[s] - b[s] for s in seeds])
    std = float(diffs.std(ddof=1)) if len(seeds) > 1 else 0.0
    p = math.nan
    if len(seeds) >= 2 and std >= SAME:
        from scipy import stats

        p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return Paired(len(seeds), float(diffs.mean()), std, p)


def t_half_width(std: float, n: int, alpha: float = ALPHA) -> float:
    """Half the width of the two-sided (1 − alpha) t interval of a mean over ``n`` values with sample std ``std``."""
    from scipy import stats

    return float(stats.t.ppf(1 - alpha / 2, n - 1) * std / math.sqrt(n))


def t_test_power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """The probability that a two-sided one-sample (paired) t-test at level ``alpha`` over ``n`` values rejects
    when the true mean is ``effect`` standard deviations: the statistic is noncentral t with n − 1 degrees of
    freedom and noncentrality ``effect · sqrt(n)``, so power = P(T > c) + P(T < −c), c = t_(1−alpha/2, n−1).
    The lower tail is taken as P(T' > c) with T' of noncentrality −effect · sqrt(n) (the same number, which
    scipy's ``nct.cdf`` returns as NaN for large noncentralities)."""
    from scipy import stats

    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    return float(stats.nct.sf(critical, df, nc) + stats.nct.sf(critical, df, -nc))


@lru_cache(maxsize=256)
def _detectable_per_std(n: int, power: float, alpha: float) -> float:
    """The effect, in standard deviations, at which :func:`t_test_power` is ``power`` (brentq, to 1e-12)."""
    from scipy import optimize, stats

    df = n - 1
    high = (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) / math.sqrt(n)  # the normal-shift estimate,
    while t_test_power(high, n, alpha) < power:  # which lies a little below the answer for small n
        high *= 1.5
    return float(optimize.brentq(lambda d: t_test_power(d, n, alpha) - power, 0.0, high, xtol=1e-12))


def detectable_effect(std: float, n: int, power: float = 0.8, alpha: float = ALPHA) -> float:
    """The smallest true mean difference a two-sided paired t-test over ``n`` seeds detects with probability
    ``power`` at level ``alpha``, taking the differences' sample std ``std`` as their true one: the δ at which
    the noncentral t (n − 1 degrees of freedom, noncentrality δ·sqrt(n)/std) puts ``power`` beyond ±t_(1−alpha/2),
    solved exactly (:func:`t_test_power`). Per unit of std at 80 % power: 11.55 for 2 seeds, 3.264 for 3, 1.682
    for 5, 0.996 for 10 (the shortcut ``(t_(1−alpha/2) + t_power) / sqrt(n)`` gives 9.96 and 3.097 for 2 and 3
    seeds, at which the real power is 0.73 and 0.77). NaN below two seeds or when ``std`` is not positive and
    finite. What a null result with these seeds can rule out."""
    if n < 2 or not math.isfinite(std) or std <= 0:
        return math.nan
    return std * _detectable_per_std(n, power, alpha)


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
