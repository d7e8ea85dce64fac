"""The statistics of seeds: the detectable effect solved exactly, and what is true when every seed agrees."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from kdgen.reporting.statistics import detectable_effect, paired, t_test_power

# Per unit of the differences' std, 80 % power, two-sided alpha 0.05: computed with brentq on scipy's noncentral
# t and checked by simulation (400,000 draws per n, seed 12345: power 0.8004, 0.7992, 0.8000, 0.7998 +- 0.0013).
EXACT = {2: 11.549888, 3: 3.264044, 5: 1.681997, 10: 0.996001}
# The shortcut (t_0.975 + t_0.8) / sqrt(n) the module used before: too small at small n.
SHORTCUT = {2: 9.9579, 3: 3.0965, 5: 1.6625, 10: 0.9947}


def power_by_quadrature(effect, n, alpha=0.05):
    """Power of the two-sided one-sample t-test, without the noncentral t: T = (Z + effect·sqrt(n)) / sqrt(V/df)
    with Z normal and V chi-square(df), so P(|T| > c) = E_V[Φ(nc − c·sqrt(V/df)) + Φ(−nc − c·sqrt(V/df))]."""
    df, nc = n - 1, effect * math.sqrt(n)
    c = stats.t.ppf(1 - alpha / 2, df)

    def integrand(v):
        s = c * math.sqrt(v / df)
        return (stats.norm.cdf(nc - s) + stats.norm.cdf(-nc - s)) * stats.chi2.pdf(v, df)

    return integrate.quad(integrand, 0, np.inf, epsabs=1e-12, epsrel=1e-10, limit=200)[0]


@pytest.mark.parametrize("n", sorted(EXACT))
def test_detectable_effect_golden_values(n):
    assert detectable_effect(1.0, n) == pytest.approx(EXACT[n], abs=1e-5)
    assert detectable_effect(0.35, n) == pytest.approx(0.35 * EXACT[n], abs=1e-5)  # linear in the std
    assert detectable_effect(1.0, n) > SHORTCUT[n]  # the shortcut understated it


def test_the_issues_numbers():
    # issue 29: per sigma, n = 3 gives 3.264 (the shortcut 3.097, real power 0.77), n = 2 gives 11.55 (9.96, 0.73)
    assert round(detectable_effect(1.0, 3), 3) == 3.264 and round(detectable_effect(1.0, 2), 2) == 11.55
    assert round(power_by_quadrature(SHORTCUT[3], 3), 2) == 0.77 and round(power_by_quadrature(SHORTCUT[2], 2), 2) == 0.73


@pytest.mark.parametrize("n", sorted(EXACT))
def test_the_detectable_effect_has_80_percent_power(n):
    effect = detectable_effect(1.0, n)
    assert power_by_quadrature(effect, n) == pytest.approx(0.80, abs=1e-4)
    assert t_test_power(effect, n) == pytest.approx(0.80, abs=1e-6)
    df, nc, c = n - 1, effect * math.sqrt(n), stats.t.ppf(0.975, n - 1)
    upper = 1 - stats.nct.cdf(c, df, nc)
    lower = stats.nct.cdf(-c, df, nc)
    if math.isfinite(lower):  # scipy's nct.cdf returns NaN in the far lower tail (n = 2: nc 16.3)
        assert upper + lower == pytest.approx(0.80, abs=1e-4)
    else:
        assert upper == pytest.approx(0.80, abs=1e-4)


def test_by_simulation_the_exact_value_has_80_percent_power_and_the_shortcut_less():
    rng = np.random.default_rng(29)
    for n in (2, 3):
        def rejected(effect, draws=100_000):
            x = rng.standard_normal((draws, n)) + effect
            t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(n))
            return float(np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1)))

        assert abs(rejected(detectable_effect(1.0, n)) - 0.80) < 0.006  # 2.4 standard errors
        assert rejected(SHORTCUT[n]) < 0.78  # 0.73 (n = 2) and 0.77 (n = 3)


def test_detectable_effect_is_undefined_without_seeds_or_spread():
    assert math.isnan(detectable_effect(1.0, 1))
    assert math.isnan(detectable_effect(0.0, 5))
    assert math.isnan(detectable_effect(math.nan, 5))


def test_the_same_difference_on_every_seed_has_no_t_test_but_a_sign_test():
    # one digits test image is 100/360 = 0.28 points; the float noise of percentages is not spread
    a = {s: 100 * (350 + s) / 360 for s in range(3)}
    b = {s: 100 * (349 + s) / 360 for s in range(3)}
    found = paired(a, b)
    assert found.no_spread and not found.identical
    assert found.mean == pytest.approx(0.2778, abs=1e-4)
    assert math.isnan(found.p) and math.isnan(found.half_width) and math.isnan(found.detectable)
    assert found.sign_p == pytest.approx(0.25)  # all 3 differences positive: 2 * 0.5^3
    assert paired({s: 1.0 for s in range(6)}, {s: 0.0 for s in range(6)}).sign_p == pytest.approx(0.03125)
    same = paired(a, dict(a))
    assert same.no_spread and same.identical and math.isnan(same.sign_p) and math.isnan(same.detectable)
    # with spread: a t-test, no sign test; one seed: nothing
    spread = paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert not spread.no_spread and math.isnan(spread.sign_p) and spread.p == pytest.approx(0.0741, abs=1e-3)
    assert spread.detectable == pytest.approx(EXACT[3], abs=1e-5)  # std 1
    one = paired({0: 1.0}, {0: 0.0})
    assert not one.no_spread and math.isnan(one.p) and math.isnan(one.detectable)
