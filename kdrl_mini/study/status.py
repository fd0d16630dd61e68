"""Progress of the pre-registered study while its runs finish: which runs exist, which claims can be judged.

The study (``kdrl-mini reproduce --full``) writes ``<study>/runs/<variant>/seed<k>/`` and marks a run
finished by writing ``final.json`` last. Until every planned run has finished, a reader needs to
know (a) which (variant, seed) pairs are finished, started or not started, and (b) which claims
can already be judged: a claim is *complete* when both of its variants have every planned seed
finished. This module reads the run folders only (it never writes) and leaves the pre-registered
analysis (:mod:`kdrl_mini.study.reproduction`, :mod:`kdrl_mini.study.stats`) untouched: the provisional view
calls :func:`reproduction.judge_all` on the complete claims' runs and adds one bound, below.

Why a verdict may still change. Holm's procedure gives each claim a confidence level that depends
on the p-values of *every* claim in its family, so while some claims are pending the final level of
a complete claim is unknown. It lies between the strictest Holm level, ``1 - alpha/m`` (``m`` =
planned family size), and the unadjusted ``1 - alpha``. Intervals at those levels are nested, and
the verdict rule is monotone in the interval (a narrower interval keeps "reproduced", "reversed" or
"equivalent"), so when the verdicts at both ends agree, the final verdict is that one whatever the
pending claims do: the claim is *settled*. Otherwise it depends on the pending claims.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from . import reproduction, stats
from .claims import paired
from ..runs.metrics import read_metrics

FINISHED, STARTED, NOT_STARTED = "finished", "started", "not started"


def planned_seeds() -> dict[str, list[int]]:
    """variant -> seeds of the pre-registered plan (``reproduction.SETTINGS``), in plan order."""
    _, seeds = reproduction.SETTINGS.full_plan()
    return {name: list(s) for name, s in seeds.items()}


def run_status(study_dir: str | Path, plan: dict[str, list[int]] | None = None) -> list[dict]:
    """One row per planned (variant, seed): ``state`` is "finished" (``final.json`` exists),
    "started" (a ``metrics.jsonl`` without ``final.json``: training now, or interrupted and
    resumable) or "not started"; ``step`` is the last training step logged (0 when none)."""
    plan = planned_seeds() if plan is None else plan
    rows = []
    for variant, seeds in plan.items():
        for seed in seeds:
            run = Path(study_dir) / "runs" / variant / f"seed{seed}"
            step = 0
            if (run / "metrics.jsonl").exists():
                steps, _ = read_metrics(run)
                step = max((s["step"] for s in steps), default=0)
            if (run / "final.json").exists():
                state = FINISHED
            elif (run / "metrics.jsonl").exists():
                state = STARTED
            else:
                state = NOT_STARTED
            rows.append({"variant": variant, "seed": seed, "state": state, "step": step})
    return rows


def finished_seeds(status: list[dict]) -> dict[str, list[int]]:
    """variant -> its finished seeds (every planned variant present, possibly with [])."""
    out: dict[str, list[int]] = {}
    for r in status:
        out.setdefault(r["variant"], [])
        if r["state"] == FINISHED:
            out[r["variant"]].append(r["seed"])
    return out


def complete_variants(status: list[dict]) -> list[str]:
    """Variants whose every planned seed is finished."""
    by: dict[str, list[bool]] = {}
    for r in status:
        by.setdefault(r["variant"], []).append(r["state"] == FINISHED)
    return [v for v, done in by.items() if all(done)]


def status_table(status: list[dict], max_steps: int | None = None) -> str:
    """Markdown: per variant, finished seeds, started seeds with their last logged step, not started."""
    max_steps = reproduction.SETTINGS.max_steps if max_steps is None else max_steps
    rows = ["| variant | planned seeds | finished | started (last step logged) | not started |",
            "|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in status):
        rs = [r for r in status if r["variant"] == variant]
        done = [str(r["seed"]) for r in rs if r["state"] == FINISHED]
        started = [f"{r['seed']} ({r['step']}/{max_steps})" for r in rs if r["state"] == STARTED]
        todo = [str(r["seed"]) for r in rs if r["state"] == NOT_STARTED]
        rows.append(f"| {variant} | {len(rs)} | {', '.join(done) or '—'} | {', '.join(started) or '—'} | "
                    f"{', '.join(todo) or '—'} |")
    return "\n".join(rows)


def claim_status(status: list[dict], claims=reproduction.CLAIMS) -> dict[str, dict]:
    """claim -> {"complete": both variants have all planned seeds finished, "paired": seeds
    finished for both, "planned": seeds planned for both}."""
    plan: dict[str, set] = {}
    for r in status:
        plan.setdefault(r["variant"], set()).add(r["seed"])
    done = {v: set(s) for v, s in finished_seeds(status).items()}
    out = {}
    for c in claims:
        planned = plan.get(c.better, set()) & plan.get(c.worse, set())
        paired = done.get(c.better, set()) & done.get(c.worse, set())
        out[c.name] = {"complete": bool(planned) and paired >= planned, "paired": len(paired),
                       "planned": len(planned)}
    return out


def _margin(claim, records: list[dict]) -> float:
    """The verdict rule's equivalence margin, as ``reproduction.judge_all`` sets it."""
    if claim.metric.endswith("accuracy"):
        return reproduction.MARGIN
    return reproduction.MARGIN * abs(statistics.fmean(r[claim.metric] for r in records if r["variant"] == claim.worse))


def verdict_bounds(claim, records: list[dict], family_size: int, alpha: float = 0.05) -> dict:
    """The claim's verdict at the strictest Holm level (1 - alpha/family_size) and at the
    unadjusted level (1 - alpha); ``settled`` when they agree (see the module docstring)."""
    diffs = paired(claim, records)
    if len(diffs) < 2:
        return {"strict": "not run", "loose": "not run", "settled": False}
    margin = _margin(claim, records)
    out = {}
    for name, level in (("strict", 1 - alpha / family_size), ("loose", 1 - alpha)):
        _, lo, hi = stats.t_interval(diffs, level)
        out[name] = stats.verdict(lo, hi, margin)
    out["settled"] = out["strict"] == out["loose"]
    return out


def provisional_claims(records: list[dict], status: list[dict], claims=reproduction.CLAIMS,
                       alpha: float = 0.05) -> dict[str, dict]:
    """Judge the complete claims only; the others are "pending".

    Complete claims go through ``reproduction.judge_all`` on the runs of the complete variants
    (so Holm's family holds the complete claims only: levels provisional until the family is
    complete). Each row also says whether its verdict is ``settled`` (``verdict_bounds``) and
    whether its family is complete (then the result is the pre-registered analysis itself)."""
    cs = claim_status(status, claims)
    ready = set(complete_variants(status))
    kept = [r for r in records if r["variant"] in ready]
    complete = [c for c in claims if cs[c.name]["complete"]]
    judged = reproduction.judge_all(kept, complete, alpha) if complete else {}
    family_size = {f: sum(c.family == f for c in claims) for f in {c.family for c in claims}}
    family_done = {f: all(cs[c.name]["complete"] for c in claims if c.family == f) for f in family_size}
    out = {}
    for c in claims:
        row = {**cs[c.name], "family_complete": family_done[c.family]}
        if c.name in judged and "mean" in judged[c.name]:
            row.update(judged[c.name])
            row.update(verdict_bounds(c, kept, family_size[c.family], alpha))
            if family_done[c.family]:
                row["settled"] = True
        else:
            row["verdict"] = "pending"
            row["settled"] = False
        out[c.name] = row
    return out


def provisional_table(judged: dict[str, dict], claims=reproduction.CLAIMS) -> str:
    """Markdown of :func:`provisional_claims`: pending claims show their paired seeds, judged ones
    the paired mean, Holm-adjusted interval and verdict, and whether the verdict can still change."""
    rows = ["| | claim | seeds paired / planned | ours: gain in the claimed direction [Holm-adjusted CI] "
            "| verdict | can it still change? |", "|---|---|---|---|---|---|"]
    for c in claims:
        r = judged[c.name]
        ours = "—" if "mean" not in r else f"{r['mean']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]"
        if r["verdict"] == "pending":
            change = "pending: runs missing"
        elif r["family_complete"]:
            change = "no: final"
        elif r["settled"]:
            change = "no: same verdict at every possible Holm level"
        else:
            change = f"yes: {r['strict']} at the strictest level, {r['loose']} unadjusted"
        label = r["verdict"] + (" (exploratory)" if c.family == "exploratory" else "")
        rows.append(f"| {c.name} | {c.text} | {r['paired']} / {r['planned']} | {ours} | {label} | {change} |")
    return "\n".join(rows)


def claim_power(records: list[dict], claims=reproduction.CLAIMS, effect: float = 0.05,
                relative_effect: float = 0.05, planned: dict[str, int] | None = None,
                alpha: float = 0.05) -> dict[str, dict]:
    """Per claim, ``stats.power`` from the observed SD of its paired differences: at the
    unadjusted level and at the strictest Holm level of its family, for a true difference of
    ``effect`` (accuracy claims) or ``relative_effect`` x the worse variant's mean (length claims),
    with the planned number of seeds (``planned``: claim -> seeds; default the paired count)."""
    family_size = {f: sum(c.family == f for c in claims) for f in {c.family for c in claims}}
    out = {}
    for c in claims:
        diffs = paired(c, records)
        if len(diffs) < 2:
            out[c.name] = {"seeds": len(diffs)}
            continue
        sd = statistics.stdev(diffs)
        size = effect if c.metric.endswith("accuracy") else relative_effect * abs(statistics.fmean(
            r[c.metric] for r in records if r["variant"] == c.worse))
        n = (planned or {}).get(c.name, len(diffs))
        out[c.name] = {"seeds": len(diffs), "n": n, "sd": sd, "effect": size,
                       "power": stats.power(sd, n, size, 1 - alpha),
                       "power_strict": stats.power(sd, n, size, 1 - alpha / family_size[c.family])}
    return out
