"""The README's main job: GRPO, KD-FKL and KDRL on study v4's world, one seed, a short budget; the
untrained student and the teacher as lines, a table, the comparison figure and one sentence of numbers.

Each method runs at study v4's settings (:mod:`.v4`: trained at 48 tokens, decided at 64, each at the rate
under which it learns alone; KDRL with the exact KL at the pilot's beta), shortened to ``STEPS`` steps with
200-row greedy evaluations of mix, test and blind at 64 tokens. The two baselines are evaluated on the same
rows. Two worker processes share the runs (one per core).

A demonstration, not evidence: the pre-registered study is :mod:`.v4` (``data/study``).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..evaluation import evaluate_splits
from ..runs.loading import load_world
from ..runs.metrics import read_metrics
from ..runs.plots import comparison_figure
from .runner import collect, run_study
from .stats import t_interval
from .v4 import BUDGET, DECIDED, MAIN_ARMS, base_config

STEPS = 100
ROWS = 200
SPLITS = tuple(f"{s}@{BUDGET}" for s in DECIDED)
SHORT = {"max_steps": STEPS, "eval_every": 25, "eval_size": ROWS, "final_eval_size": ROWS, "checkpoint_every": 25,
         "eval_splits": ",".join(SPLITS), "probe_size": 0}
METRICS = tuple(f"{s}_accuracy" for s in SPLITS) + (f"mix@{BUDGET}_length", "train_reward", "step_time")


def final_metrics(run_dir: Path) -> dict:
    """Last evaluation of each split + training-curve summaries of a finished run."""
    steps, evals = read_metrics(run_dir)
    last = {e["split"]: e for e in evals}
    tail = steps[-max(1, len(steps) // 5):]  # last 20% of steps
    values = [s["reward"] for s in tail if s["reward"] == s["reward"]]  # NaN for kd-fkl: no rollouts
    return {**{f"{split}_accuracy": e["eval_accuracy"] for split, e in last.items()},
            f"mix@{BUDGET}_length": last[f"mix@{BUDGET}"]["eval_length"],
            "train_reward": sum(values) / len(values) if values else float("nan"),
            "step_time": sum(s["step_time"] for s in steps) / len(steps), "steps": len(steps)}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 for a single value)."""
    m, _, high = t_interval(values, 0.95)
    return m, (high - m if len(values) > 1 else 0.0)


def aggregate(records: list[dict]) -> dict[str, dict]:
    """variant -> {metric: (mean, ci95), "seeds": [...]}, variants in first-seen order."""
    table: dict[str, dict] = {}
    for name in dict.fromkeys(r["variant"] for r in records):
        rows = [r for r in records if r["variant"] == name]
        table[name] = {"seeds": sorted(r["seed"] for r in rows), **{k: mean_ci([r[k] for r in rows]) for k in METRICS}}
    return table


def write_table(table: dict[str, dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "seeds"] + [f"{k}_{s}" for k in METRICS for s in ("mean", "ci95")])
        for name, e in table.items():
            w.writerow([name, len(e["seeds"])] + [f"{v:.4f}" for k in METRICS for v in e[k]])


def format_table(table: dict[str, dict], baselines: dict[str, dict]) -> str:
    """Markdown: the baselines, then each variant's accuracies, length and training reward (mean ± CI).
    No time column: seconds per step measure the machine's load more than the method."""
    cols = [(f"{s} acc", f"{s}_accuracy", 3) for s in SPLITS] + [
        ("mix length", f"mix@{BUDGET}_length", 1), ("train reward", "train_reward", 3)]
    rows = ["| variant | seeds | " + " | ".join(c[0] for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, numbers in baselines.items():
        rows.append(f"| {name} | - | " + " | ".join(f"{numbers[k]:.{d}f}" if k in numbers else "—" for _, k, d in cols)
                    + " |")
    for name, e in table.items():
        def cell(k, d):
            m, h = e[k]
            return "—" if m != m else f"{m:.{d}f} ± {h:.{d}f}" if len(e["seeds"]) > 1 else f"{m:.{d}f} ± n/a"
        rows.append(f"| {name} | {len(e['seeds'])} | " + " | ".join(cell(k, d) for _, k, d in cols) + " |")
    return "\n".join(rows)


def baselines_on_rows(out: Path) -> dict[str, dict]:
    """The untrained student's and the teacher's accuracy on the job's evaluation rows (computed once)."""
    path = out / "baselines.json"
    if path.exists():
        return json.loads(path.read_text())
    cfg = base_config(**SHORT)
    world = load_world(cfg)
    found = {}
    for name, model in (("untrained student", world.student), ("teacher", world.teacher)):
        rows = evaluate_splits(model, world.tokenizer, cfg, world.splits, list(SPLITS), 0, ROWS)
        found[name] = {f"{r['split']}_accuracy": r["eval_accuracy"] for r in rows}
        found[name][f"mix@{BUDGET}_length"] = rows[0]["eval_length"]
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found, indent=1) + "\n")
    return found


def summary_sentence(table: dict[str, dict], baselines: dict[str, dict], steps: int = STEPS) -> str:
    """What the figure shows, in numbers: per split the best method's accuracy against both baselines."""
    parts = []
    for split in SPLITS:
        key = f"{split}_accuracy"
        best = max(table, key=lambda n: table[n][key][0])
        parts.append(f"on {split} the best is {best} at {table[best][key][0]:.3f} (untrained "
                     f"{baselines['untrained student'][key]:.3f}, teacher {baselines['teacher'][key]:.3f})")
    return f"After {steps} steps, greedy over {ROWS} rows at {BUDGET} tokens: " + "; ".join(parts) + "."


def _worker(out: Path, plan: dict, seeds: list[int], threads, steps: int) -> None:
    """One of the job's processes: trains the runs of ``plan`` no other worker has claimed."""
    from ..utils import setup

    setup(threads=1)
    run_study(out, plan, seeds, base_config(**{**SHORT, "max_steps": steps}, threads=threads),
              summarize=final_metrics, progress=False)


def reproduce_brief(out: str | Path = "runs/reproduce", steps: int | None = None, only: list[str] | None = None,
                    seeds: list[int] | None = None, threads: int | None = None, workers: int = 2) -> int:
    """``kdrl-mini reproduce``: train the three methods (two processes share them), print the table and the
    sentence, draw the figure."""
    out = Path(out)
    plan = {k: v for k, v in MAIN_ARMS.items() if not only or k in only}
    seeds = seeds or [0]
    t0 = time.time()
    baselines = baselines_on_rows(out)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(_worker, out, plan, seeds, threads, steps or STEPS) for _ in range(workers)]
        for job in jobs:
            job.result()
    records = [r for r in collect(out) if r["variant"] in plan]  # also runs of earlier --only calls
    table = aggregate(records)
    write_table(table, out / "table.csv")
    print(format_table(table, baselines))
    runs = {name: out / "runs" / name / f"seed{seeds[0]}" for name in plan}
    comparison_figure(runs, out / "comparison.png", SPLITS, ("reward", "response_length", "entropy"), baselines,
                      f"GRPO vs KD-FKL vs KDRL, one seed, {steps or STEPS} steps (trained at 48 tokens, greedy accuracy "
                      f"at {BUDGET} on {ROWS} rows; kd-fkl trains on teacher samples: no rollout reward of its own)")
    print("\n" + summary_sentence(table, baselines, steps or STEPS))
    print(f"\n{len(records)} runs in {time.time() - t0:.0f} s; table {out / 'table.csv'}, plot {out / 'comparison.png'}")
    print("One seed and a short budget: a demonstration, not evidence. The pre-registered study (verdicts with "
          "intervals) lives in data/study: kdrl-mini reproduce --full")
    return 0
