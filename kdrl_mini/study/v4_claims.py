"""Study v4's gates and claims, fixed in ``data/study/PREREGISTRATION.md`` before its runs.

Every number is a greedy accuracy (or length) on the final 1,000 rows of a split at the decision budget
(64 tokens: ``mix@64``), from :func:`kdrl_mini.study.v4.summarize`. A claim's data are the per-seed
differences better - worse, signed so that > 0 supports it, judged by the shared rule of
:mod:`kdrl_mini.study.claims` (Holm over the claims, a smallest effect of interest, an equivalence margin).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .claims import PAPER_GAP, Claim
from .claims import claims_table as claims_markdown
from .claims import judge_all as claims_judge_all
from .plots import forest_plot
from .tables import variant_table

D = "@64"  # the decision budget's split suffix (v4.BUDGET)
ALPHA = 0.05
THRESHOLDS = PAPER_GAP  # the smallest effect of interest is the paper's 2-point gap

CLAIMS = (
    Claim("C1", "KDRL beats GRPO in-domain", "paper: KDRL 56.8 vs GRPO 54.6 [2nd]", "kdrl", "grpo", f"mix{D}_accuracy"),
    Claim("C2", "KDRL beats KD-RKL in-domain", "paper: KDRL 56.8 vs KD-RKL 56.1 [2nd]", "kdrl", "kd-rkl",
          f"mix{D}_accuracy"),
    Claim("C3", "KD-RKL beats GRPO in-domain", "paper: KD-RKL 56.1 vs GRPO 54.6 [2nd]", "kd-rkl", "grpo",
          f"mix{D}_accuracy"),
    Claim("C4", "annealed beta beats a constant beta", "paper: KDRL-Annealing 57.2 vs KDRL 56.8 [2nd]",
          "kdrl-anneal", "kdrl", f"mix{D}_accuracy"),
    Claim("C5", "k2 beats k3 as KDRL's KL", "paper: k2 over k3, about +1.4 [2nd]", "kdrl-k2", "kdrl-k3",
          f"mix{D}_accuracy"),
    Claim("C6", "reward-guided masking shortens KDRL's answers", "paper: masking cuts >1.4K tokens [2nd]",
          "kdrl-mask", "kdrl", f"mix{D}_length", higher=False),
    Claim("C7", "joint KDRL beats sequential KD then GRPO at equal budget", "the unified objective's premise",
          "kdrl", "kd-then-grpo", f"mix{D}_accuracy"),
)


def judge_all(records: list[dict], untrained: dict, claims=CLAIMS) -> dict[str, dict]:
    """Every claim judged by the pre-registered rule (:func:`kdrl_mini.study.claims.judge_all`)."""
    return claims_judge_all(records, untrained, claims, THRESHOLDS, ALPHA)


def mean_of(records: list[dict], variant: str, key: str) -> float:
    values = [r[key] for r in records if r["variant"] == variant and key in r and r[key] == r[key]]
    return statistics.fmean(values) if values else float("nan")


def gates(records: list[dict], untrained: dict, teacher: dict, kd_arm: str = "kd-rkl") -> list[dict]:
    """Item 4 of issue 30, from finished runs (means over seeds): each gate's value and whether it holds.
    ``kd_arm`` is the KD-RKL arm with the KL form KDRL uses; sequential runs record ``mix@64_at_switch``."""
    test = f"test{D}_accuracy"
    gap = teacher[test] - untrained[test]
    rows = [
        ("RL acts beyond stopping: GRPO - untrained on blind@64 >= 0.10",
         mean_of(records, "grpo", f"blind{D}_accuracy") - untrained[f"blind{D}_accuracy"], 0.10),
        (f"KD transfers: {kd_arm} closes >= 40% of the untrained-to-teacher gap on test@64",
         (mean_of(records, kd_arm, test) - untrained[test]) / gap, 0.40),
        ("the teacher stays wrong on blind@64 (at most 0.05)", -teacher[f"blind{D}_accuracy"], -0.05),
        *[(f"the untrained student is off the floor on {s}{D} (>= 0.05)", untrained[f"{s}{D}_accuracy"], 0.05)
          for s in ("mix", "test", "blind")],
        ("the sequential baseline's GRPO stage keeps its KD stage's mix@64 (final - at the switch >= 0)",
         mean_of(records, "kd-then-grpo", f"mix{D}_accuracy") - mean_of(records, "kd-then-grpo", f"mix{D}_at_switch"),
         0.0),
    ]
    return [{"gate": g, "value": round(v, 4), "threshold": t, "holds": v >= t} for g, v, t in rows]


def gates_table(rows: list[dict]) -> str:
    """Markdown: each gate, its value, its threshold and whether it holds."""
    lines = ["| gate | value | threshold | holds |", "|---|---|---|---|"]
    lines += [f"| {r['gate']} | {r['value']} | {r['threshold']} | {'yes' if r['holds'] else 'NO'} |" for r in rows]
    return "\n".join(lines)


TABLE_METRICS = tuple(f"{s}@{b}_accuracy" for b in (64, 48) for s in ("mix", "test", "blind")) + (
    f"mix{D}_length", f"mix{D}_truncated", "probe_kl", "train_reward", "train_seconds")


def table(records: list[dict], untrained: dict, teacher: dict, order: tuple[str, ...] = ()) -> str:
    """Markdown: mean ± 95% t-interval half-width over seeds per arm; the untrained student and the teacher
    first (one deterministic evaluation each)."""
    return variant_table(records, TABLE_METRICS, order, [("untrained student", untrained), ("teacher", teacher)])


def write_outputs(out: str | Path, records: list[dict], untrained: dict, teacher: dict,
                  order: tuple[str, ...] = ()) -> tuple[str, str]:
    """``table.md``, ``claims.md`` and ``forest.png`` in ``out``; returns the two markdown tables."""
    out = Path(out)
    judged = judge_all(records, untrained)
    arms, verdicts = table(records, untrained, teacher, order), claims_markdown(judged, CLAIMS)
    (out / "table.md").write_text(arms + "\n")
    (out / "claims.md").write_text(verdicts + "\n")
    forest_plot(judged, CLAIMS, out / "forest.png")
    return arms, verdicts
