"""The README's main job: GRPO, KD-FKL, KD-RKL and KDRL on the study's world, one seed, a short
budget; a table of mean +- 95% CI over whatever seeds were run, and the comparison figure.

Each method runs at the study's settings (:mod:`.v3`: the warmed student, each method at the
learning rate under which it learns alone), shortened to ``STEPS`` steps with small evaluations of
``mix`` and ``blind`` at the rollout budget and of ``test`` at 64 tokens (where the teacher is
right), so the figure shows each method's dynamics in about three minutes on two cores.

A demonstration, not evidence: the pre-registered study is :mod:`.v3` (``data/study_v3``).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path


from ..runs.metrics import read_metrics
from ..runs.plots import comparison_figure
from .runner import collect, run_study
from .stats import t_interval
from .v3 import STUDY_DIR, VARIANTS, base_config

BASELINES = ("grpo", "kd-fkl", "kd-rkl", "kdrl")
STEPS = 30
SPLITS = ("mix", "blind", "test@64")
SHORT = {"max_steps": STEPS, "eval_every": 10, "eval_size": 100, "final_eval_size": 200, "checkpoint_every": 10,
         "eval_splits": ",".join(SPLITS)}


def brief_variants() -> dict[str, dict]:
    """The README's main job: the four methods at the study's per-method settings, one seed."""
    return {name: VARIANTS[name] for name in BASELINES}


def final_metrics(run_dir: Path) -> dict:
    """Last evaluation of each split + training-curve summaries of a finished run."""
    steps, evals = read_metrics(run_dir)
    last = {e["split"]: e for e in evals}
    tail = steps[-max(1, len(steps) // 5):]  # last 20% of steps
    values = [s["reward"] for s in tail if s.get("reward") == s.get("reward")]  # NaN for kd-fkl: no rollouts
    return {**{f"{split}_accuracy": e["eval_accuracy"] for split, e in last.items()},
            "mix_length": last["mix"]["eval_length"],
            "train_reward": sum(values) / len(values) if values else float("nan"),
            "step_time": sum(s["step_time"] for s in steps) / len(steps), "steps": len(steps)}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 for a single value)."""
    m, _, high = t_interval(values, 0.95)
    return m, (high - m if len(values) > 1 else 0.0)


METRICS = ("mix_accuracy", "blind_accuracy", "test@64_accuracy", "mix_length", "train_reward", "step_time")


def aggregate(records: list[dict]) -> dict[str, dict]:
    """variant -> {metric: (mean, ci95), "seeds": [...]}, variants in first-seen order."""
    table: dict[str, dict] = {}
    for name in dict.fromkeys(r["variant"] for r in records):
        rows = [r for r in records if r["variant"] == name]
        entry = {"seeds": sorted(r["seed"] for r in rows)}
        for k in METRICS:
            entry[k] = mean_ci([r[k] for r in rows])
        table[name] = entry
    return table


def write_table(table: dict[str, dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "seeds"] + [f"{k}_{s}" for k in METRICS for s in ("mean", "ci95")])
        for name, e in table.items():
            w.writerow([name, len(e["seeds"])] + [f"{v:.4f}" for k in METRICS for v in e[k]])


def format_table(table: dict[str, dict]) -> str:
    """Markdown table: accuracies, length and training reward as mean +- CI. No time column:
    seconds per step measure the machine's load more than the method."""
    cols = [("mix acc", "mix_accuracy", 3), ("blind acc", "blind_accuracy", 3), ("test@64 acc", "test@64_accuracy", 3),
            ("mix length", "mix_length", 1), ("train reward", "train_reward", 3)]
    head = "| variant | seeds | " + " | ".join(c[0] for c in cols) + " |\n|---|---|" + "---|" * len(cols)
    rows = []
    for name, e in table.items():
        f = lambda k, d: ("—" if e[k][0] != e[k][0] else f"{e[k][0]:.{d}f} ± {e[k][1]:.{d}f}"  # noqa: E731
                          if len(e["seeds"]) > 1 else f"{e[k][0]:.{d}f} ± n/a")  # NaN: kd-fkl has no rollout reward
        rows.append(f"| {name} | {len(e['seeds'])} | " + " | ".join(f(k, d) for _, k, d in cols) + " |")
    return "\n".join([head] + rows)


def reproduce_brief(out: str | Path = "runs/reproduce", steps: int | None = None, only: list[str] | None = None,
                    seeds: list[int] | None = None, threads: int | None = None) -> int:
    """``kdrl-mini reproduce``: train the four methods, print the table, draw the figure."""
    out = Path(out)
    base = base_config(**SHORT, threads=threads)
    if steps:
        base = base.replace(max_steps=steps)
    plan = brief_variants()
    if only:
        plan = {k: v for k, v in plan.items() if k in only}
    seeds = seeds or [0]
    t0 = time.time()
    run_study(out, plan, seeds, base, summarize=final_metrics)
    records = collect(out)  # every finished run in the folder, also from earlier --only calls
    table = aggregate(records)
    write_table(table, out / "table.csv")
    print(format_table(table))
    runs = {name: out / "runs" / name / f"seed{seeds[0]}" for name in plan if name in BASELINES}
    untrained = json.loads((Path(STUDY_DIR) / "untrained.json").read_text())
    comparison_figure(runs, out / "comparison.png", SPLITS, ("reward", "response_length", "entropy"), untrained,
                      f"GRPO vs KD vs KDRL, one seed, {base.max_steps} steps (greedy accuracy at 48 tokens on mix and "
                      "blind, at 64 on test; kd-fkl trains on teacher samples: no rollout reward of its own)")
    print(f"\n{len(records)} runs in {time.time() - t0:.0f} s; table {out / 'table.csv'}, plot {out / 'comparison.png'}")
    print("One seed and a short budget: a demonstration, not evidence. The pre-registered study (10 seeds, "
          f"verdicts with intervals) lives in {STUDY_DIR}: kdrl-mini reproduce --full")
    return 0
