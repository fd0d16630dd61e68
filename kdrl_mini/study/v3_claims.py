"""Study v3's claims and how each is judged, fixed in ``data/study_v3/PREREGISTRATION.md`` before its runs.

Every accuracy is greedy at the rollout budget (48 tokens) on the final 1,000 rows of a split
(:func:`kdrl_mini.study.v3.summarize`). The in-domain metric is ``mix`` (drawn like ``train``; its
strata are ``test``, where the teacher is right, and ``blind``, where it is wrong). A claim's data
are the per-seed differences d_s = better_s - worse_s, signed so that d > 0 supports it. The
untrained student enters as a variant whose value is the same for every seed (``untrained.json``).

Verdict of a claim, on its Holm-adjusted interval (alpha 0.05 over the seven claims):
- "reproduced": the interval lies above 0 *and* the estimate reaches the smallest effect of
  interest (SESOI: 0.05 accuracy; 10% of the worse arm's length);
- "real but below the smallest effect of interest": above 0, estimate below the SESOI;
- "not reproduced (equivalent)": the interval lies inside (-margin, +margin) (0.03 accuracy; 6%
  of the worse arm's length); "not reproduced (reversed)": below 0; else "inconclusive".
Each accuracy claim also reports ``better`` against the untrained student at the same level.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from . import stats
from .plots import forest_plot
from .claims import UNTRAINED, Claim, Thresholds
from .claims import claims_table as claims_markdown
from .claims import judge_all as claims_judge_all
from .tables import variant_table

SESOI, MARGIN = 0.05, 0.03               # accuracy (absolute)
LENGTH_SESOI, LENGTH_MARGIN = 0.10, 0.06  # length (relative to the worse arm's mean)
ALPHA = 0.05

CLAIMS = (
    Claim("C1", "KDRL beats GRPO in-domain", "paper: KDRL > GRPO (reported averages)", "kdrl", "grpo", "mix_accuracy"),
    Claim("C2", "KDRL beats KD-RKL in-domain", "paper: KDRL > KD-RKL (reported averages)", "kdrl", "kd-rkl", "mix_accuracy"),
    Claim("C3", "RL adds what KD cannot: KDRL is above the untrained student on the teacher's blind spot",
          "paper: RL complements KD (abstract)", "kdrl", UNTRAINED, "blind_accuracy"),
    Claim("C4", "KDRL answers are shorter than KD-FKL's", "paper: token efficiency (abstract)",
          "kdrl", "kd-fkl", "mix_length", higher=False),
    Claim("C5", "KDRL-Mask (no KD on rewarded responses) shortens answers", "paper: reward-guided masking",
          "kdrl-mask", "kdrl", "mix_length", higher=False),
    Claim("C6", "joint KDRL beats sequential KD then GRPO at equal budget", "the unified objective's premise",
          "kdrl", "kd-then-grpo", "mix_accuracy"),
    Claim("C7", "4-bit + LoRA costs KDRL accuracy (full weights beat QLoRA)", "the kit's product configuration",
          "kdrl", "kdrl-qlora", "mix_accuracy"),
)


THRESHOLDS = Thresholds(SESOI, MARGIN, LENGTH_SESOI, LENGTH_MARGIN)


def judge_all(records: list[dict], untrained: dict, claims=CLAIMS, alpha: float = ALPHA) -> dict[str, dict]:
    """Every claim judged by the pre-registered rule (:func:`kdrl_mini.study.claims.judge_all`)."""
    return claims_judge_all(records, untrained, claims, THRESHOLDS, alpha)


def claims_table(records: list[dict], untrained: dict, claims=CLAIMS) -> str:
    """Markdown: each claim's difference, Holm interval, the better arm against the untrained student, the
    SESOI, the power at it and the verdict (:func:`kdrl_mini.study.claims.claims_table`)."""
    return claims_markdown(judge_all(records, untrained, claims), claims)


TABLE_METRICS = ("mix_accuracy", "test_accuracy", "blind_accuracy", "ood_accuracy", "test@64_accuracy",
                 "mix_length", "mix_truncated", "train_reward", "train_seconds")
VARIANT_ORDER = ("grpo", "kd-fkl", "kd-rkl", "kd-then-grpo", "kdrl", "kdrl-mask", "kdrl-qlora")


def table(records: list[dict], untrained: dict, teacher: dict) -> str:
    """Markdown: mean ± 95% t-interval half-width over seeds per variant, the untrained student and
    the teacher first (one deterministic evaluation each)."""
    return variant_table(records, TABLE_METRICS, VARIANT_ORDER, [("untrained student", untrained), ("teacher", teacher)])


def write_outputs(out: str | Path, records: list[dict], untrained: dict, teacher: dict) -> tuple[str, str]:
    """``table.md``, ``claims.md`` and ``forest.png`` in ``out``; returns the two markdown tables."""
    out = Path(out)
    variants, verdicts = table(records, untrained, teacher), claims_table(records, untrained)
    (out / "table.md").write_text(variants + "\n")
    (out / "claims.md").write_text(verdicts + "\n")
    forest_plot(judge_all(records, untrained), CLAIMS, out / "forest.png")
    return variants, verdicts
