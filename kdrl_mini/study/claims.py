"""A claim of a study and its paired data: ``better`` against ``worse`` on one metric, seed by seed.

Every study (study v4, the preset study) states its claims as :class:`Claim` records and
judges them on :func:`paired` differences with :mod:`kdrl_mini.study.stats`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from . import stats

UNTRAINED = "untrained"  # the untrained student as a variant whose value is the same for every seed


@dataclass(frozen=True)
class Claim:
    """``better`` beats ``worse`` on ``metric`` (lower is better when ``higher`` is False)."""

    name: str
    text: str
    source: str
    better: str
    worse: str
    metric: str = "test_accuracy"
    higher: bool = True
    family: str = "core"   # Holm's correction runs within a family; "exploratory" claims are labelled so


def paired(claim: Claim, records: list[dict]) -> list[float]:
    """Per-seed differences better - worse, signed so that > 0 supports the claim."""
    by = {(r["variant"], r["seed"]): r.get(claim.metric, float("nan")) for r in records}
    seeds = sorted({s for v, s in by if v == claim.better} & {s for v, s in by if v == claim.worse})
    sign = 1 if claim.higher else -1
    return [sign * (by[(claim.better, s)] - by[(claim.worse, s)]) for s in seeds]


@dataclass(frozen=True)
class Thresholds:
    """A study's smallest effects of interest and equivalence margins: accuracy in absolute units, length
    relative to the worse arm's mean."""

    sesoi: float
    margin: float
    length_sesoi: float
    length_margin: float


# The paper's KDRL-over-GRPO gap is about 2 points of accuracy (KDRL 56.8, annealed 57.2, GRPO 54.6): the
# smallest effect of interest is those two points, equivalence within 1.5 (study v4 and the preset study).
PAPER_GAP = Thresholds(sesoi=0.02, margin=0.015, length_sesoi=0.05, length_margin=0.03)


def with_untrained(records: list[dict], untrained: dict) -> list[dict]:
    """``records`` plus one "untrained" record per seed present (its numbers from ``untrained.json``)."""
    seeds = sorted({r["seed"] for r in records})
    return records + [{"variant": UNTRAINED, "seed": s, **untrained} for s in seeds]


def thresholds(claim: Claim, records: list[dict], th: "Thresholds") -> tuple[float, float]:
    """(smallest effect of interest, equivalence margin) of ``claim`` in its metric's units."""
    if claim.metric.endswith("accuracy"):
        return th.sesoi, th.margin
    worse = statistics.fmean(r[claim.metric] for r in records if r["variant"] == claim.worse)
    return th.length_sesoi * worse, th.length_margin * worse


def judge_all(records: list[dict], untrained: dict, claims, th: "Thresholds", alpha: float = 0.05) -> dict[str, dict]:
    """Every claim's paired mean, Holm-adjusted interval, verdict, power at the SESOI at its level,
    and (accuracy claims whose metric ``untrained`` holds) ``better`` minus the untrained student at the
    same level."""
    records = with_untrained(records, untrained)
    diffs = {c.name: paired(c, records) for c in claims}
    judged = [c for c in claims if len(diffs[c.name]) >= 2]
    levels = stats.holm_levels({c.name: stats.p_value(diffs[c.name]) for c in judged}, alpha)
    out = {c.name: {"verdict": "not run", "seeds": len(diffs[c.name])} for c in claims}
    for c in judged:
        d, level = diffs[c.name], levels[c.name]
        m, lo, hi = stats.t_interval(d, level)
        sesoi, margin = thresholds(c, records, th)
        out[c.name] = {"mean": m, "low": lo, "high": hi, "level": level, "seeds": len(d), "p": stats.p_value(d),
                       "sesoi": sesoi, "margin": margin, "verdict": stats.verdict(lo, hi, margin, sesoi, m),
                       "power": stats.power(statistics.stdev(d), len(d), sesoi, level)}
        if c.metric.endswith("accuracy") and c.worse != UNTRAINED and c.metric in untrained:
            vs = paired(Claim("", "", "", c.better, UNTRAINED, c.metric), records)
            out[c.name]["vs_untrained"] = stats.t_interval(vs, level)
    return out


def claims_table(j: dict[str, dict], claims) -> str:
    """Markdown from :func:`judge_all`'s ``j``: each claim, our paired difference [Holm interval, its level],
    the better arm against the untrained student, the SESOI, the power at it, and the verdict."""
    rows = ["| | claim | source | difference [Holm CI] (level, seeds) | better arm vs untrained | SESOI | power "
            "at SESOI | verdict |", "|---|---|---|---|---|---|---|---|"]
    for c in claims:
        r = j[c.name]
        if "mean" not in r:
            rows.append(f"| {c.name} | {c.text} | {c.source} | — | — | — | — | {r['verdict']} |")
            continue
        ours = f"{r['mean']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] ({100 * r['level']:.2f}%, {r['seeds']})"
        vs = "—" if "vs_untrained" not in r else "{:+.3f} [{:+.3f}, {:+.3f}]".format(*r["vs_untrained"])
        rows.append(f"| {c.name} | {c.text} | {c.source} | {ours} | {vs} | {r['sesoi']:.3g} | {r['power']:.2f} | "
                    f"{r['verdict']} |")
    return "\n".join(rows)
