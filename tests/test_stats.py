"""The studies' statistics (kdrl_mini.study.stats) and the verdict rule, on hand-made numbers."""

import math

import pytest

from kdrl_mini.study import stats


def test_t_interval_matches_the_textbook_value():
    m, lo, hi = stats.t_interval([1.0, 2.0, 3.0], 0.95)
    half = 4.302653 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half), rel=1e-5)
    assert stats.t_interval([0.5], 0.95)[1:] == (-math.inf, math.inf)


def test_holm_steps_down_and_stops_at_the_first_failure():
    levels = stats.holm_levels({"a": 0.001, "b": 0.02, "c": 0.03, "d": 0.5}, alpha=0.05)
    # a: 0.001 <= 0.05/4 passes; b: 0.02 > 0.05/3 fails -> b, c, d all tested at 0.05/3
    assert levels["a"] == pytest.approx(1 - 0.05 / 4)
    assert levels["b"] == levels["c"] == levels["d"] == pytest.approx(1 - 0.05 / 3)


@pytest.mark.parametrize("low, high, expected", [
    (0.01, 0.2, "reproduced"), (-0.2, -0.01, "not reproduced (reversed)"),
    (-0.02, 0.02, "not reproduced (equivalent)"), (-0.05, 0.1, "inconclusive"), (-0.02, 0.04, "inconclusive"),
])
def test_verdict_rule(low, high, expected):
    assert stats.verdict(low, high, 0.03) == expected


def test_power_grows_with_seeds_and_effect():
    assert stats.power(0.05, 5, 0.05) < stats.power(0.05, 10, 0.05) < stats.power(0.05, 10, 0.1)
    assert 0.0 < stats.power(0.05, 5, 0.0) < 0.06  # no effect: about the false-positive rate


@pytest.mark.parametrize("low, high, mean, expected", [
    (0.01, 0.09, 0.05, "reproduced"),                                      # estimate reaches the SESOI
    (0.005, 0.025, 0.015, "real but below the smallest effect of interest"),  # above 0, inside the margin
    (-0.01, 0.02, 0.005, "not reproduced (equivalent)"), (-0.2, -0.01, -0.1, "not reproduced (reversed)"),
])
def test_verdict_with_a_smallest_effect_of_interest(low, high, mean, expected):
    assert stats.verdict(low, high, 0.03, sesoi=0.05, mean=mean) == expected


def test_seeds_for_power_reaches_the_target_and_respects_the_floor():
    n = stats.seeds_for_power(0.05, 0.05, 0.99)
    assert stats.power(0.05, n, 0.05, 0.99) >= 0.8 > stats.power(0.05, n - 1, 0.05, 0.99)
    assert stats.seeds_for_power(0.001, 0.05, 0.95) == 8  # a tiny spread still gets the minimum
    assert stats.seeds_for_power(1.0, 0.01, 0.99, maximum=20) == 20


def test_power_is_finite_far_in_the_tail():
    """scipy's noncentral-t cdf is NaN far in its lower tail (nc = 8.6, df = 4); stats.power takes that
    tail as the upper tail of -T, so a large effect has power near 1, not NaN."""
    from scipy import stats as st

    level = 1 - 0.05 / 9
    p = stats.power(0.013, 5, 0.05, level)
    upper = st.nct.sf(st.t.ppf(0.5 + level / 2, 4), 4, 0.05 / (0.013 / 5 ** 0.5))
    assert p == p and upper <= p <= upper + (1 - level) / 2 and p > 0.9
    assert stats.power(0.03, 5, 0.05, 0.95) == pytest.approx(0.79, abs=0.01)
    assert stats.power(0.03, 5, -0.05, 0.95) == pytest.approx(stats.power(0.03, 5, 0.05, 0.95))  # two-sided
