"""The comparisons of the KDRL paper, re-run on the tiny world: runs, aggregation, claims.

``run_study`` trains every (variant, seed) pair into ``out_dir/runs/<variant>/seed<k>``; a
finished run (``final.json`` present) is skipped and an interrupted one resumes from its
checkpoint, so the study itself is resumable. ``aggregate`` turns the per-run files into a
table of mean +- 95% CI over seeds, and ``judge_claims`` states, per claim of the paper, whether
the ordering reproduces here.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .config import TrainConfig
from .metrics import read_metrics
from .trainer import Trainer, load_student_for

BASELINES = ("grpo", "kd-fkl", "kd-rkl", "kdrl")


def variants(beta: float) -> dict[str, dict]:
    """Named config overrides for the full study, on top of the shipped ``kdrl`` config.

    ``beta`` is the study's reference coefficient; the coefficient sweep spans it by 4x.
    """
    algo = lambda a: {"algorithm": a}  # noqa: E731
    return {
        "grpo": algo("grpo"),
        "kd-fkl": algo("kd-fkl"),
        "kd-rkl": algo("kd-rkl"),
        "kdrl": {},                                   # k2, KL in loss, constant beta, KD on all
        "kdrl-k1": {"kl_kind": "k1"},
        "kdrl-k3": {"kl_kind": "k3"},
        "kdrl-exact": {"kl_kind": "exact"},
        "kdrl-reward": {"kl_mode": "reward", "kl_kind": "k1"},
        f"kdrl-beta{beta / 4:g}": {"beta": beta / 4},
        f"kdrl-beta{beta * 4:g}": {"beta": beta * 4},
        "kdrl-anneal": {"beta": beta * 4, "beta_end": beta / 4, "beta_schedule": "linear"},
        "kdrl-incorrect": {"kd_strategy": "incorrect"},
        "kdrl-failed-groups": {"kd_strategy": "failed-groups"},
    }


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


def run_study(out_dir: str | Path, plan: dict[str, dict], seeds: list[int] | dict[str, list[int]], base: TrainConfig,
              progress: bool = True, summarize=final_metrics, step_progress: bool = False) -> list[dict]:
    """Train every (variant, seed); skip finished runs, resume interrupted ones.

    ``seeds`` is one list for every variant or a dict variant -> its seeds; ``summarize(run_dir)``
    gives the numbers written to each finished run's ``final.json``; ``step_progress`` adds each
    run's own step bar (long GPU runs)."""
    out_dir = Path(out_dir)
    per = seeds if isinstance(seeds, dict) else {name: seeds for name in plan}
    jobs = [(name, seed) for name in plan for seed in per[name]]
    records = []
    world = None
    finished = sum((out_dir / "runs" / n / f"seed{k}" / "final.json").exists() for n, k in jobs)
    bar = tqdm(total=len(jobs), initial=finished, desc="study", disable=not progress)  # rate of new runs only
    for name, seed in jobs:
        run = out_dir / "runs" / name / f"seed{seed}"
        cfg = base.replace(seed=seed, output_dir=str(run), **plan[name])
        cfg.validate()
        if (run / "final.json").exists():
            _check_same_config(run, cfg)
        elif not _take(run):  # another worker of this study is training it
            continue
        else:
            bar.set_postfix(run=f"{name}/seed{seed}")
            trainer = Trainer(cfg, world=_fresh_student(world, cfg))
            world = trainer.world
            resume = (run / "checkpoint.pt").exists()  # killed before its first checkpoint: start over
            trainer.train(resume=resume, overwrite=not resume, progress=step_progress)
            (run / "final.json").write_text(json.dumps({"variant": name, "seed": seed, **summarize(run)}, indent=1))
            (run / "checkpoint.pt").unlink(missing_ok=True)  # the study keeps metrics, not weights
            shutil.rmtree(run / "adapter", ignore_errors=True)
            (run / WORKER_FILE).unlink(missing_ok=True)
            bar.update()
        records.append(json.loads((run / "final.json").read_text()))
    return records


WORKER_FILE = ".study-worker"  # the pid of the study process training this run


def _take(run: Path) -> bool:
    """Claim ``run`` for this process, so that several ``reproduce --full`` workers can share one
    study (one per free core): False when a live process holds it, True once this one does (a
    claim left by a process that is gone is taken over)."""
    from .run_folder import take_pid_file

    run.mkdir(parents=True, exist_ok=True)
    return take_pid_file(run / WORKER_FILE) == 0


def _check_same_config(run: Path, cfg: TrainConfig) -> None:
    """A finished run is reused only if it was trained with the config asked for now."""
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    ignore = {"output_dir", "threads", "device"}
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in ignore and k in saved and saved[k] != v)
    if changed:
        raise ValueError(f"{run} holds a finished run with other settings for {changed}; use another --output-dir "
                         f"for this study, or delete that run folder to train it again")


def _fresh_student(world, cfg: TrainConfig):
    """Reuse the loaded teacher, tokenizer and data; load a new student for every run."""
    vocab = None if world is None else getattr(world.student, "kdrl_vocab", None)  # the same logit columns
    return None if world is None else dataclasses.replace(world, student=load_student_for(cfg, vocab))


# ---------------------------------------------------------------- aggregation
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 for a single value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    t = T95.get(len(values) - 1, 1.96)
    return m, t * statistics.stdev(values) / math.sqrt(len(values))


METRICS = ("test_accuracy", "ood_accuracy", "test_length", "ood_length", "final_exact_kl", "step_time")


def collect(out_dir: str | Path) -> list[dict]:
    """Every ``final.json`` under ``out_dir/runs`` (sorted by variant, seed)."""
    files = sorted(Path(out_dir).glob("runs/*/seed*/final.json"))
    return [json.loads(f.read_text()) for f in files]


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


# ---------------------------------------------------------------- claims
@dataclass
class Claim:
    """``better`` should beat ``worse`` on ``metric`` (``higher`` is better unless False)."""

    text: str
    paper: str
    better: str
    worse: str
    metric: str = "test_accuracy"
    higher: bool = True


def judge(claim: Claim, records: list[dict]) -> dict:
    """Paired by seed: the claim reproduces when the 95% CI of the difference excludes 0 in the
    claimed direction, is contradicted when it excludes 0 the other way, else inconclusive."""
    by = {(r["variant"], r["seed"]): r[claim.metric] for r in records}
    seeds = sorted({s for (v, s) in by if v == claim.better} & {s for (v, s) in by if v == claim.worse})
    if not seeds:
        return {"verdict": "not run", "diff": None, "ci95": None, "seeds": 0}
    sign = 1 if claim.higher else -1
    diffs = [sign * (by[(claim.better, s)] - by[(claim.worse, s)]) for s in seeds]
    m, ci = mean_ci(diffs)
    if len(diffs) >= 2 and m - ci > 0:
        verdict = "reproduced"
    elif len(diffs) >= 2 and m + ci < 0:
        verdict = "not reproduced (reversed)"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "diff": m, "ci95": ci, "seeds": len(diffs)}


def claims(beta: float) -> list[Claim]:
    """The paper's comparisons as testable orderings. Paper numbers: see docs/paper.md (most
    come from secondary summaries of the paper and are marked so)."""
    return [
        Claim("KDRL beats GRPO in-domain", "+2.6 avg. accuracy (secondary source)", "kdrl", "grpo"),
        Claim("KDRL beats KD-RKL in-domain", "+1.1 avg. accuracy (secondary source)", "kdrl", "kd-rkl"),
        Claim("KDRL beats KD-FKL (SFT) in-domain", "+4.7 avg. accuracy (secondary source)", "kdrl", "kd-fkl"),
        Claim("KDRL generalises better out of domain than KD-FKL", "KD generalises poorly OOD (abstract)",
              "kdrl", "kd-fkl", metric="ood_accuracy"),
        Claim("KDRL responses are shorter than KD-FKL's", "shorter than KD (abstract: token efficiency)",
              "kdrl", "kd-fkl", metric="test_length", higher=False),
        Claim("k2 in the loss beats k3", "k2 recommended (secondary source)", "kdrl", "kdrl-k3"),
        Claim("k2 in the loss beats k1", "k1 has no gradient in expectation (math)", "kdrl", "kdrl-k1"),
        Claim("annealed beta beats a constant beta", "5e-3 -> 1e-3 annealing best (secondary source)",
              "kdrl-anneal", "kdrl"),
        Claim("KL in the loss beats KL in the reward", "not confirmed", "kdrl", "kdrl-reward"),
        Claim("masking KD on correct responses shortens responses", "shorter (secondary source)",
              "kdrl-incorrect", "kdrl", metric="test_length", higher=False),
        Claim("masking KD on correct responses keeps accuracy", "no loss (secondary source)",
              "kdrl-incorrect", "kdrl"),
    ]


def claims_table(records: list[dict], beta: float) -> str:
    """Markdown table: claim, paper, ours (paired diff +- 95% CI), verdict."""
    rows = ["| claim | paper | ours: gain in the claimed direction ± 95% CI (seeds) | verdict |", "|---|---|---|---|"]
    for c in claims(beta):
        j = judge(c, records)
        ours = "—" if j["diff"] is None else f"{j['diff']:+.3f} ± {j['ci95']:.3f} ({j['seeds']})"
        rows.append(f"| {c.text} | {c.paper} | {ours} | {j['verdict']} |")
    return "\n".join(rows)


def learning_curves(out_dir: str | Path, variants_: list[str], metric: str = "reward", window: int = 5) -> dict:
    """variant -> (steps, mean over seeds of the smoothed per-step ``metric``) from committed runs."""
    from .plotting import smooth

    curves = {}
    for name in variants_:
        per_seed = []
        for run in sorted(Path(out_dir).glob(f"runs/{name}/seed*")):
            steps, _ = read_metrics(run)
            per_seed.append(smooth([s.get(metric, float("nan")) for s in steps], window))
        if per_seed:
            n = min(len(c) for c in per_seed)
            curves[name] = (list(range(1, n + 1)), [statistics.fmean(c[i] for c in per_seed) for i in range(n)])
    return curves
