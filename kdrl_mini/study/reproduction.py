"""The pre-registered reproduction study on the tiny world: its plan, per-run summaries, claims and verdicts.

The plan (variants, seeds, budget) and the claims of study v2 are fixed here and in
``data/study/PREREGISTRATION.md``; its committed runs are read back by the notebooks and
:mod:`.status`, and :func:`claims_table` judges every claim by the rule in :mod:`kdrl_mini.study.stats`.
The one-GPU preset study reuses its plan, summaries and tables. (``kdrl-mini reproduce --full`` now
runs study v3, :mod:`.v3`.)

Primary metric of a run: greedy accuracy on a split averaged over its last ``LAST_EVALS``
evaluations (less noise than one final evaluation). Also per split: the area under the accuracy
curve (mean over all evaluations), steps to reach ``THRESHOLD`` on test, response length and
truncation rate over the same last evaluations.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from ..runs.metrics import read_metrics
from ..schedules import annealed
from ..trainer import Trainer
from . import stats
from .claims import Claim, paired
from .plots import forest_plot
from .tables import variant_table

LAST_EVALS = 5
THRESHOLD = 0.5
MARGIN = 0.03          # equivalence margin of the verdict rule (accuracy)
CORE_SEEDS = [1, 2, 3, 4, 5]  # seed 0 was used by the pilot
AXIS_SEEDS = [1, 2, 3]


def plan(beta: float, beta_anneal: tuple[float, float], anneal_steps: int) -> tuple[dict, dict]:
    """(variant -> config overrides, variant -> seeds). Every variant shares the study's base config.

    Core (5 seeds): GRPO, KD-FKL, KD-RKL, KDRL (k2 in the loss, constant beta), KDRL annealed
    (linear from beta_anneal[0] to the floor beta_anneal[1] within anneal_steps, then held: the
    paper's shape), KDRL at a constant beta equal to the annealed run's mean (so "anneal beats
    constant" is not "more beta beats less"), KDRL-Mask (no KD on correct responses), and the
    sequential pipeline (KD-FKL for half the steps, then GRPO). Exploratory axis (3 seeds): the
    estimator (k1, k3, exact) and the KL folded into the reward per token.
    """
    start, floor = beta_anneal
    core = {
        "grpo": {"algorithm": "grpo"}, "kd-fkl": {"algorithm": "kd-fkl"}, "kd-rkl": {"algorithm": "kd-rkl"},
        "kdrl": {"algorithm": "kdrl", "beta": beta},
        "kdrl-anneal": {"algorithm": "kdrl", "beta": start, "beta_end": floor, "beta_schedule": "linear",
                        "anneal_steps": anneal_steps},
        "kdrl-mask": {"algorithm": "kdrl", "beta": beta, "kd_strategy": "incorrect"},
        "kd-then-grpo": {"algorithm": "kd-then-grpo"},
    }
    axis = {
        "kdrl-k1": {"algorithm": "kdrl", "beta": beta, "kl_kind": "k1"},
        "kdrl-k3": {"algorithm": "kdrl", "beta": beta, "kl_kind": "k3"},
        "kdrl-exact": {"algorithm": "kdrl", "beta": beta, "kl_kind": "exact"},
        "kdrl-reward": {"algorithm": "kdrl", "beta": beta, "kl_mode": "reward", "kl_kind": "k1"},
    }
    variants = {**core, **axis}
    seeds = {**{k: CORE_SEEDS for k in core}, **{k: AXIS_SEEDS for k in axis}}
    return variants, seeds


def with_mean_beta_control(variants: dict, seeds: dict, mean_beta: float) -> tuple[dict, dict]:
    """Add "kdrl-meanbeta": constant beta equal to the annealed schedule's mean over the run."""
    variants = {**variants, "kdrl-meanbeta": {"algorithm": "kdrl", "beta": mean_beta}}
    return variants, {**seeds, "kdrl-meanbeta": CORE_SEEDS}


def summarize(run_dir: str | Path) -> dict:
    """The numbers of one finished run (``final.json``): per eval split the primary metric and
    the secondary ones; from the training rows the mean exact KL and reward of the last 20%."""
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
    test = [e for e in evals if e["split"] == "test"]
    reached = [e["step"] for e in test if e["eval_accuracy"] >= THRESHOLD]
    out["steps_to_threshold"] = reached[0] if reached else float("nan")
    tail = steps[-max(1, len(steps) // 5):]
    for key in ("exact_kl", "reward", "response_length"):
        values = [s[key] for s in tail if s.get(key) == s.get(key)]  # NaN: does not apply
        out[f"train_{key}"] = statistics.fmean(values) if values else float("nan")
    return out


CLAIMS = (
    Claim("C1", "KDRL beats GRPO in-domain", "paper: KDRL > GRPO (+2.6 avg., annealed variant) [2nd]", "kdrl", "grpo"),
    Claim("C2", "KDRL beats KD-RKL in-domain", "paper: KDRL > KD-RKL (+1.1 avg., annealed) [2nd]", "kdrl", "kd-rkl"),
    Claim("C3", "KDRL beats KD-FKL on the teacher's blind spot", "paper: RL adds what KD cannot (abstract)",
          "kdrl", "kd-fkl", "blind_accuracy"),
    Claim("C4", "KDRL beats KD-RKL on the teacher's blind spot", "paper: RL adds what KD cannot (abstract)",
          "kdrl", "kd-rkl", "blind_accuracy"),
    Claim("C5", "KDRL generalises better than KD-FKL out of domain", "paper: KD generalises worse (abstract)",
          "kdrl", "kd-fkl", "ood_accuracy"),
    Claim("C6", "KDRL answers are shorter than KD-FKL's", "paper: token efficiency (abstract)",
          "kdrl", "kd-fkl", "test_length", higher=False),
    Claim("C7", "annealed beta beats a constant beta of the same mean", "paper: annealing best (57.2) [2nd]",
          "kdrl-anneal", "kdrl-meanbeta"),
    Claim("C8", "KDRL-Mask shortens answers", "paper: masking cuts >1.4K tokens [2nd]",
          "kdrl-mask", "kdrl", "test_length", higher=False),
    Claim("C9", "joint KDRL beats sequential KD then GRPO at equal budget", "the unified objective's premise",
          "kdrl", "kd-then-grpo"),
    Claim("E1", "k2 in the loss beats k3", "paper: k2 > k3 (+1.4) [2nd]", "kdrl", "kdrl-k3", family="exploratory"),
    Claim("E2", "k2 in the loss beats k1", "k1's expected gradient is 0 (math)", "kdrl", "kdrl-k1",
          family="exploratory"),
    Claim("E3", "KL in the loss beats KL in the reward (per token)", "not in the paper", "kdrl", "kdrl-reward",
          family="exploratory"),
)


def judge_all(records: list[dict], claims=CLAIMS, alpha: float = 0.05) -> dict[str, dict]:
    """Every claim's paired mean, Holm-adjusted interval (within its family) and verdict."""
    diffs = {c.name: paired(c, records) for c in claims}
    out = {}
    for family in dict.fromkeys(c.family for c in claims):
        members = [c for c in claims if c.family == family and len(diffs[c.name]) >= 2]
        levels = stats.holm_levels({c.name: stats.p_value(diffs[c.name]) for c in members}, alpha)
        for c in members:
            m, lo, hi = stats.t_interval(diffs[c.name], levels[c.name])
            scale = "accuracy" if c.metric.endswith("accuracy") else "relative"
            margin = MARGIN if scale == "accuracy" else MARGIN * abs(statistics.fmean(
                r[c.metric] for r in records if r["variant"] == c.worse))
            out[c.name] = {"mean": m, "low": lo, "high": hi, "level": levels[c.name], "seeds": len(diffs[c.name]),
                           "p": stats.p_value(diffs[c.name]), "verdict": stats.verdict(lo, hi, margin)}
    for c in claims:
        out.setdefault(c.name, {"verdict": "not run", "seeds": len(diffs[c.name])})
    return out


def claims_table(records: list[dict], claims=CLAIMS) -> str:
    """Markdown: claim, source, our paired difference with its Holm-adjusted interval, verdict."""
    j = judge_all(records, claims)
    rows = ["| | claim | source | ours: gain in the claimed direction [Holm-adjusted CI] (seeds) | verdict |",
            "|---|---|---|---|---|"]
    for c in claims:
        r = j[c.name]
        ours = "—" if "mean" not in r else f"{r['mean']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] ({r['seeds']})"
        label = r["verdict"] + (" (exploratory)" if c.family == "exploratory" else "")
        rows.append(f"| {c.name} | {c.text} | {c.source} | {ours} | {label} |")
    return "\n".join(rows)


# ---------------------------------------------------------------- the pre-registered settings
@dataclass(frozen=True)
class StudySettings:
    """The study's budget and coefficients, fixed in PREREGISTRATION.md before any run."""

    max_steps: int = 150
    eval_every: int = 15            # 10 evaluations; the primary metric averages the last 5 (steps 90-150)
    eval_size: int = 1000           # rows of every eval split
    beta: float = 0.01              # constant KL coefficient of KDRL and KDRL-Mask (chosen on the pilot)
    anneal_start: float = 0.025     # the paper's shape scaled to beta: 2.5 beta ...
    anneal_floor: float = 0.005     # ... down to 0.5 beta ...
    anneal_steps: int = 43          # ... within 29% of the run (about 80 of 280 steps in the paper), then held

    def base_overrides(self) -> dict:
        return {"max_steps": self.max_steps, "eval_every": self.eval_every, "eval_size": self.eval_size,
                "checkpoint_every": 15}

    def mean_anneal_beta(self) -> float:
        beta = annealed("linear", self.anneal_start, self.anneal_floor, self.anneal_steps)
        return statistics.fmean(beta(s) for s in range(self.max_steps))

    def full_plan(self) -> tuple[dict, dict]:
        variants, seeds = plan(self.beta, (self.anneal_start, self.anneal_floor), self.anneal_steps)
        return with_mean_beta_control(variants, seeds, round(self.mean_anneal_beta(), 6))


SETTINGS = StudySettings()


def untrained_summary(base) -> dict:
    """The untrained student's row of the tables: greedy accuracy, length and truncation on every
    eval split (``base``: the study's TrainConfig; the same evaluation as the runs')."""
    trainer = Trainer(base)
    out = {}
    for split in trainer.world.eval_splits:
        e = trainer.evaluate(split)
        out.update({f"{split}_accuracy": e["eval_accuracy"], f"{split}_auc": e["eval_accuracy"],
                    f"{split}_length": e["eval_length"], f"{split}_truncated": e["eval_truncated"]})
    return out
VARIANT_ORDER = ("grpo", "kd-fkl", "kd-rkl", "kd-then-grpo", "kdrl", "kdrl-anneal", "kdrl-meanbeta", "kdrl-mask",
                 "kdrl-k1", "kdrl-k3", "kdrl-exact", "kdrl-reward")
TABLE_METRICS = ("test_accuracy", "blind_accuracy", "ood_accuracy", "ood_control_accuracy", "test_auc",
                 "test_length", "test_truncated", "train_exact_kl")


def table(records: list[dict], baseline: dict | None = None) -> str:
    """Markdown: mean ± 95% t-interval half-width over seeds per variant ("n/a" for one seed),
    with the untrained student's row first when ``baseline`` (its summary numbers) is given."""
    return variant_table(records, TABLE_METRICS, VARIANT_ORDER, [("untrained student", baseline)] if baseline else [])


def write_outputs(out: str | Path, records: list[dict], baseline: dict | None = None, claims=CLAIMS) -> tuple[str, str]:
    """``table.md``, ``claims.md`` and ``forest.png`` in ``out`` from the finished runs' ``records``
    (:func:`table`, :func:`claims_table`, :func:`kdrl_mini.study.plots.forest_plot`); returns the two
    markdown tables."""
    out = Path(out)
    variants, verdicts = table(records, baseline), claims_table(records, claims)
    (out / "table.md").write_text(variants + "\n")
    (out / "claims.md").write_text(verdicts + "\n")
    forest_plot(judge_all(records, claims), claims, out / "forest.png")
    return variants, verdicts
