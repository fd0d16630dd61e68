"""The README's main job: GRPO, KD-FKL, KD-RKL and KDRL on the shipped world, one seed, a short
budget; a table of mean +- 95% CI over whatever seeds were run, and the comparison figure.

A demonstration, not evidence: the pre-registered study is :mod:`.reproduction`.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from ..config import load_config
from ..runs.metrics import read_metrics
from ..runs.plots import comparison_figure
from .runner import collect, run_study
from .stats import t_interval

BASELINES = ("grpo", "kd-fkl", "kd-rkl", "kdrl")


def brief_variants() -> dict[str, dict]:
    """The README's main job: the four methods, one seed."""
    return {name: {"algorithm": name} for name in BASELINES}


def final_metrics(run_dir: Path) -> dict:
    """Last eval of each split + training-curve summaries of a finished run."""
    steps, evals = read_metrics(run_dir)
    last = {}
    for e in evals:
        last[e["split"]] = e
    tail = steps[-max(1, len(steps) // 5):]  # last 20% of steps
    mean = lambda k: sum(s.get(k, float("nan")) for s in tail) / len(tail)  # noqa: E731
    extra = {"blind_accuracy": last["blind"]["eval_accuracy"]} if "blind" in last else {}  # the teacher's blind spot
    return {
        **extra,
        "test_accuracy": last["test"]["eval_accuracy"],
        "ood_accuracy": last["ood"]["eval_accuracy"],
        "test_length": last["test"]["eval_length"],
        "ood_length": last["ood"]["eval_length"],
        "final_exact_kl": mean("exact_kl"),
        "step_time": sum(s["step_time"] for s in steps) / len(steps),
        "steps": len(steps),
    }


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 for a single value)."""
    m, _, high = t_interval(values, 0.95)
    return m, (high - m if len(values) > 1 else 0.0)


METRICS = ("test_accuracy", "ood_accuracy", "test_length", "ood_length", "final_exact_kl", "step_time")


def aggregate(records: list[dict]) -> dict[str, dict]:
    """variant -> {metric: (mean, ci95), "seeds": [...]}, variants in first-seen order."""
    table: dict[str, dict] = {}
    for name in dict.fromkeys(r["variant"] for r in records):
        rows = [r for r in records if r["variant"] == name]
        entry = {"seeds": sorted(r["seed"] for r in rows)}
        for k in METRICS + ("blind_accuracy",):
            if all(k in r for r in rows):  # blind only in worlds that have the split
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
    """Markdown table: accuracies (blind when the world has it), length and exact KL as mean +- CI.
    No time column: seconds per step measure the machine's load more than the method."""
    blind = all("blind_accuracy" in e for e in table.values()) and bool(table)
    cols = [("test acc", "test_accuracy", 3)] + ([("blind acc", "blind_accuracy", 3)] if blind else []) + [
        ("ood acc", "ood_accuracy", 3), ("test length", "test_length", 1), ("exact KL", "final_exact_kl", 3)]
    head = "| variant | seeds | " + " | ".join(c[0] for c in cols) + " |\n|---|---|" + "---|" * len(cols)
    rows = []
    for name, e in table.items():
        f = lambda k, d: (f"{e[k][0]:.{d}f} ± {e[k][1]:.{d}f}" if len(e["seeds"]) > 1  # noqa: E731
                          else f"{e[k][0]:.{d}f} ± n/a")
        rows.append(f"| {name} | {len(e['seeds'])} | " + " | ".join(f(k, d) for _, k, d in cols) + " |")
    return "\n".join([head] + rows)


def reproduce_brief(out: str | Path = "runs/reproduce", steps: int | None = None, only: list[str] | None = None,
                    seeds: list[int] | None = None, threads: int | None = None) -> int:
    """``kdrl-mini reproduce``: train the four methods, print the table, draw the figure."""
    out = Path(out)
    base = load_config("kdrl", threads=threads)
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
    comparison_figure(runs, out / "comparison.png")
    print(f"\n{len(records)} runs in {time.time() - t0:.0f} s; table {out / 'table.csv'}, plot {out / 'comparison.png'}")
    print("One seed and a short budget: a demonstration, not evidence. The pre-registered study (5 seeds, "
          "verdicts with intervals) lives in data/study: kdrl-mini reproduce --full")
    return 0
