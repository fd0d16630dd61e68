"""What the preset study reads back from its runs: each run's summary, the untrained student's row, the
per-arm table, the paper's claims and their verdicts (``table.md``, ``claims.md``, ``forest.png``).

Primary metric of a run: greedy accuracy on a split averaged over its last ``LAST_EVALS`` evaluations
(less noise than one evaluation of a few hundred rows). Also per split: the area under the accuracy curve
(the mean over all evaluations), steps to reach ``THRESHOLD`` on test, response length and truncation over
the same last evaluations; from the training rows, the mean reward, response length and exact KL of the
last 20% of steps. The claims are judged by the shared rule of :mod:`kdrl_mini.study.claims` (Holm over the
claims, a smallest effect of interest, an equivalence margin); a claim needs two seeds for a verdict.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..config import TrainConfig
from ..runs.metrics import read_metrics
from ..study.claims import PAPER_GAP, Claim, claims_table, judge_all
from ..study.plots import forest_plot
from ..study.tables import variant_table
from ..trainer import Trainer

LAST_EVALS = 5
THRESHOLD = 0.5
THRESHOLDS = PAPER_GAP  # study v4's: the paper's 2-point gap
CLAIMS = (
    Claim("P1", "KDRL annealed beats GRPO", "paper: +2.6 avg. over GRPO (annealed) [2nd]", "kdrl-anneal", "grpo"),
    Claim("P2", "KDRL annealed beats KD-RKL", "paper: +1.1 avg. over KD-RKL (annealed) [2nd]", "kdrl-anneal", "kd-rkl"),
    Claim("P3", "KDRL (constant beta) beats GRPO", "paper: KDRL 56.8 vs GRPO 54.6 [2nd]", "kdrl", "grpo"),
    Claim("P4", "KDRL (constant beta) beats KD-RKL", "paper: KDRL 56.8 vs KD-RKL 56.1 [2nd]", "kdrl", "kd-rkl"),
)
TABLE_METRICS = ("test_accuracy", "ood_accuracy", "test_auc", "test_length", "test_truncated", "train_reward",
                 "train_response_length", "train_exact_kl")


def summarize(run_dir: str | Path) -> dict:
    """The numbers of one finished run (``final.json``): per eval split the primary metric and the
    secondary ones; from the training rows the means of the last 20% of steps."""
    steps, evals = read_metrics(run_dir)
    out = {"steps": len(steps)}
    for split in dict.fromkeys(e["split"] for e in evals):
        rows = [e for e in evals if e["split"] == split]
        last = rows[-LAST_EVALS:]
        out[f"{split}_accuracy"] = statistics.fmean(e["eval_accuracy"] for e in last)
        out[f"{split}_auc"] = statistics.fmean(e["eval_accuracy"] for e in rows)
        out[f"{split}_length"] = statistics.fmean(e["eval_length"] for e in last)
        out[f"{split}_truncated"] = statistics.fmean(e.get("eval_truncated", float("nan")) for e in last)
        out[f"{split}_evals"] = len(rows)
    reached = [e["step"] for e in evals if e["split"] == "test" and e["eval_accuracy"] >= THRESHOLD]
    out["steps_to_threshold"] = reached[0] if reached else float("nan")
    tail = steps[-max(1, len(steps) // 5):]
    for key in ("exact_kl", "reward", "response_length"):
        values = [s[key] for s in tail if s.get(key) == s.get(key)]  # NaN: does not apply
        out[f"train_{key}"] = statistics.fmean(values) if values else float("nan")
    return out


def untrained_summary(base: TrainConfig) -> dict:
    """The untrained student's row of the tables: greedy accuracy, length and truncation on every eval split
    (``base``: the study's TrainConfig; the same evaluation as the runs')."""
    trainer = Trainer(base)
    out = {}
    for split in trainer.world.eval_splits:
        e = trainer.evaluate(split)
        out.update({f"{split}_accuracy": e["eval_accuracy"], f"{split}_auc": e["eval_accuracy"],
                    f"{split}_length": e["eval_length"], f"{split}_truncated": e["eval_truncated"]})
    return out


def write_outputs(out: str | Path, records: list[dict], untrained: dict | None, order: tuple[str, ...]) -> tuple[str, str]:
    """``table.md`` (arms in ``order``, the untrained student first when its numbers are given), ``claims.md``
    and ``forest.png`` in ``out`` from the finished runs' ``records``; returns the two markdown tables."""
    out = Path(out)
    judged = judge_all(records, untrained or {}, CLAIMS, THRESHOLDS)
    arms = variant_table(records, TABLE_METRICS, order, [("untrained student", untrained)] if untrained else [])
    verdicts = claims_table(judged, CLAIMS)
    (out / "table.md").write_text(arms + "\n")
    (out / "claims.md").write_text(verdicts + "\n")
    forest_plot(judged, CLAIMS, out / "forest.png")
    return arms, verdicts
