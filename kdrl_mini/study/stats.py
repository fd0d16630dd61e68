"""Paired comparisons for a study's claims: t-intervals, Holm's correction, equivalence, power.

Pure functions over lists of numbers (scipy's t distribution only). A claim compares two variants
run with the same seeds; its data are the per-seed differences d_s = better_s - worse_s, signed so
that a positive mean supports the claim.
"""

from __future__ import annotations

import math
import statistics

from scipy import stats as _st


def t_interval(diffs: list[float], level: float) -> tuple[float, float, float]:
    """(mean, low, high) of the two-sided ``level`` t-interval of the mean of ``diffs``.

    One value gives an infinitely wide interval: a single seed says nothing about its noise."""
    m = statistics.fmean(diffs)
    if len(diffs) < 2:
        return m, -math.inf, math.inf
    half = _st.t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return m, m - half, m + half


def p_value(diffs: list[float]) -> float:
    """Two-sided one-sample t-test p-value of mean(diffs) = 0 (1.0 when undefined)."""
    if len(diffs) < 2:
        return 1.0
    sd = statistics.stdev(diffs)
    if sd == 0:
        return 0.0 if statistics.fmean(diffs) != 0 else 1.0
    t = statistics.fmean(diffs) / (sd / math.sqrt(len(diffs)))
    return float(2 * _st.t.sf(abs(t), len(diffs) - 1))


def holm_levels(p_values: dict[str, float], alpha: float = 0.05) -> dict[str, float]:
    r"""Holm's step-down levels: the k-th smallest p-value (k = 0, 1, ...) is tested at
    \alpha / (m - k); once one fails, every larger p-value is tested at that same level (so none
    of them can pass). Returns claim -> the familywise confidence level 1 - its \alpha_k, used for
    its interval."""
    order = sorted(p_values, key=p_values.get)
    levels, stopped_at = {}, None
    for k, name in enumerate(order):
        a = alpha / (len(order) - k) if stopped_at is None else stopped_at
        if stopped_at is None and p_values[name] > a:
            stopped_at = a
        levels[name] = 1 - a
    return levels


def verdict(low: float, high: float, margin: float, sesoi: float | None = None, mean: float | None = None) -> str:
    """The pre-registered rule on a (Holm-adjusted) interval of the signed difference:
    "reproduced" when it lies above 0 (and, given a smallest effect of interest ``sesoi``, the
    estimate ``mean`` reaches it; an interval above 0 whose estimate stays below it is "real but
    below the smallest effect of interest"); "not reproduced" when it lies below 0 or inside
    (-margin, +margin) (then the two are equivalent at this scale); else "inconclusive"."""
    if low > 0:
        if sesoi is not None and mean < sesoi:
            return "real but below the smallest effect of interest"
        return "reproduced"
    if high < 0:
        return "not reproduced (reversed)"
    if -margin < low and high < margin:
        return "not reproduced (equivalent)"
    return "inconclusive"


def seeds_for_power(sd: float, effect: float, level: float, target: float = 0.8, minimum: int = 8,
                    maximum: int = 64) -> int:
    """The fewest seeds (at least ``minimum``) whose paired t-test at ``level`` has ``target`` power
    to detect ``effect`` when per-seed differences have standard deviation ``sd``; ``maximum`` when
    even that many fall short."""
    return next((n for n in range(minimum, maximum + 1) if power(sd, n, effect, level) >= target), maximum)


def power(sd: float, n: int, effect: float, level: float = 0.95) -> float:
    """Power of a two-sided paired t-test with ``n`` seeds to detect a true mean difference
    ``effect`` when the per-seed differences have standard deviation ``sd`` (noncentral t)."""
    if n < 2 or sd <= 0:
        return float("nan")
    df, nc = n - 1, effect / (sd / math.sqrt(n))
    crit = _st.t.ppf(0.5 + level / 2, df)
    # P(T > crit) + P(T < -crit); the lower tail as the upper tail of -T (scipy's nct.cdf returns
    # NaN far in its lower tail, e.g. nc = 8.6, df = 4).
    return float(_st.nct.sf(crit, df, nc) + _st.nct.sf(crit, df, -nc))
