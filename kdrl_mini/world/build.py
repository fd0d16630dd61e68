"""Building the tiny world: tokenizer, a teacher with a blind spot and a weak student, on CPU.

``build_world`` (CLI: ``kdrl-mini build-world``) writes the splits of :mod:`kdrl_mini.world.task`
(``train``, ``test``, ``blind``, ``ood``, ``ood_control``), ``tokenizer/``, ``models/teacher``,
``models/student``, ``models/world_report.json`` and ``models/README.md`` under ``root``, from a
seed:

1. a character-level tokenizer (``tokenizers`` WordLevel, saved as a HF tokenizer folder);
2. a Llama teacher trained on the training distribution with its ``teacher`` solutions: verbose,
   and dropping the hundreds digit whenever a total passes 100. It stops once it is strong on
   validation chains that stay below 100; on chains that cross 100 it is then confidently wrong.
3. a smaller Llama student given a brief warm-up on correct solutions (concise and verbose
   mixed), where only a few chains cross 100. It stops at the first check where it is weak but
   not hopeless in-domain *and* samples a correct crossing now and then: the edge of competence
   where reward-driven exploration can find what the teacher cannot show.

Every stop is a validation check, never wall-clock, so a rebuild retraces the same steps.
The gates of the world (issue 12) are measured at the end with the kit's reward, re-measured
with plain ``transformers`` ``generate`` on the saved folders, and written to the report.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .. import sft
from ..rollout import greedy_eval, teacher_forced_batch
from ..schedules import warmup_cosine
from ..tasks.files import EVAL_SPLITS, read_jsonl
from . import task
from .report import evaluate_model, measure_gates, models_readme, sampled_accuracy
from .specs import GROUP, STUDENT_SPEC, TEACHER_SPEC, BuildPlan, build_tokenizer, tiny_llama

LR_FLOOR = 0.02  # the learning rate never decays below 2% of its peak


def sft_steps(model, tokenizer, rows: list[dict], fields: tuple[str, ...], steps: int, batch_size: int,
              lr: float, seed: int, desc: str, warmup: int = 50, check=None, eval_every: int = 250,
              ) -> tuple[list[float], list[dict]]:
    """Supervised training (:func:`kdrl_mini.sft.fit`) on ``row[field]`` completions, each example
    using one of ``fields`` at random (a mix of solution styles); AdamW, warm-up + cosine learning
    rate. ``check(model)`` runs every ``eval_every`` steps and may stop training. Returns (per-step
    losses, log of the checks)."""
    rng = random.Random(seed)

    def batch_at(step):
        chunk = rng.sample(rows, batch_size)
        targets = [r[rng.choice(fields)] for r in chunk]
        return teacher_forced_batch(tokenizer, [r["prompt"] for r in chunk], targets, "cpu")

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    return sft.fit(model, opt, batch_at, steps, warmup_cosine(lr, steps, warmup, LR_FLOOR), check=check,
                   eval_every=eval_every, desc=desc)


def teacher_check(tok, val_test: list[dict], stop_at: float):
    """Stop the teacher once greedy accuracy on chains below 100 reaches ``stop_at``."""
    def check(model):
        acc = greedy_eval(model, tok, val_test, max_new_tokens=task.EVAL_BUDGET)["accuracy"]
        return {"val_test": acc}, acc >= stop_at
    return check


def student_check(tok, val_test: list[dict], val_blind: list[dict], plan: BuildPlan):
    """Stop the student at the first check that is weak-but-not-hopeless in-domain and finds
    correct crossings by sampling (the blind sample is measured only once the first holds)."""
    def check(model):
        acc = greedy_eval(model, tok, val_test, max_new_tokens=task.EVAL_BUDGET)["accuracy"]
        metrics = {"val_test": acc}
        if acc < plan.student_stop_test:
            return metrics, False
        torch.manual_seed(plan.check_seed)  # the check's value depends on the model only
        blind = sampled_accuracy(model, tok, val_blind)
        metrics["val_blind_per_sample"] = blind["per_sample"]
        metrics["val_blind_pass@8"] = blind[f"pass@{GROUP}"]
        return metrics, blind["per_sample"] >= plan.student_stop_blind
    return check


def pretraining_pool(plan: BuildPlan, seed: int, exclude: set[str]) -> list[dict]:
    """Rows for pre-training, drawn like ``train`` but with 4-operand crossings capped (few exist)."""
    n_cross = round(plan.pool_size * task.TRAIN_CROSSING_SHARE)
    n_range = plan.pool_size - n_cross
    mix = ((task.IN_DOMAIN, n_range / 2), (task.IN_DOMAIN_LONG, n_range / 2),
           (task.CROSSING, plan.pool_crossing_4), (task.CROSSING_LONG, n_cross - plan.pool_crossing_4))
    mix = tuple((spec, count / plan.pool_size) for spec, count in mix)
    return task.make_mixed_split(plan.pool_size, seed, mix, exclude=exclude)


def student_pool(pool: list[dict], share: float) -> list[dict]:
    """All chains below 100 of ``pool`` plus just enough crossing ones to make ``share``."""
    in_range = [r for r in pool if not r["crossing"]]
    crossing = [r for r in pool if r["crossing"]]
    n_cross = round(len(in_range) * share / (1 - share))
    return in_range + crossing[:n_cross]


def train_teacher(tok, pool, val_test, seed: int, plan: BuildPlan):
    """The teacher: SFT on its own (verbose, hundreds-dropping) solutions until strong in-domain."""
    teacher = tiny_llama(TEACHER_SPEC, tok, seed)
    losses, evals = sft_steps(teacher, tok, pool, ("teacher",), plan.teacher_steps, plan.batch_size,
                              plan.teacher_lr, seed, "teacher", check=teacher_check(tok, val_test, plan.teacher_stop),
                              eval_every=plan.teacher_eval_every)
    return teacher, losses, evals


def train_student(tok, pool, val_test, val_blind, seed: int, plan: BuildPlan):
    """The student: a brief warm-up on correct concise and verbose solutions (no length
    preference of its own), with a few crossings, stopped at the edge of competence."""
    student = tiny_llama(STUDENT_SPEC, tok, seed + 1)
    rows = student_pool(pool, plan.student_crossing_share)
    losses, evals = sft_steps(student, tok, rows, ("concise", "solution"), plan.student_steps, plan.batch_size,
                              plan.student_lr, seed + 1, "student", warmup=20,
                              check=student_check(tok, val_test, val_blind, plan), eval_every=plan.student_eval_every)
    return student, losses, evals


def world_rows(root: Path, seed: int, plan: BuildPlan) -> dict[str, list[dict]]:
    """Write the splits under ``root`` and draw the pre-training pool and validation sets
    (disjoint from every eval split). Returns every row list by name."""
    paths = task.build_world_data(root, seed=seed)
    rows = {name: read_jsonl(path) for name, path in paths.items()}
    return {**rows, **draw_pool(rows, seed, plan)}


def draw_pool(rows: dict[str, list[dict]], seed: int, plan: BuildPlan) -> dict[str, list[dict]]:
    """The pre-training pool and validation sets of the build of ``seed``, disjoint from the eval
    splits in ``rows`` (re-drawn identically from the written splits)."""
    exclude = {r["prompt"] for name in EVAL_SPLITS for r in rows[name]}
    pool = pretraining_pool(plan, seed + 100, exclude)
    val_test = [r for r in pool if not r["crossing"]][:plan.val_size]
    val_blind = [r for r in pool if r["crossing"]][:plan.val_size]
    held_out = {r["prompt"] for r in val_test + val_blind}
    return {"pool": [r for r in pool if r["prompt"] not in held_out], "val_test": val_test, "val_blind": val_blind}


@torch.no_grad()
def save_model(model, tok, out: Path, losses: list[float], evals: list[dict]) -> dict:
    """Save ``model`` + tokenizer as a HF folder; return its size and training summary."""
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return {"params": sum(p.numel() for p in model.parameters()),
            "size_mb": sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20,
            "steps_trained": len(losses), "final_train_loss": sum(losses[-20:]) / max(len(losses[-20:]), 1),
            "val_curve": evals}


def build_world(root: str | Path = "data", seed: int = 0, threads: int | None = None,
                plan: BuildPlan | None = None) -> dict:
    """Build and save the whole tiny world under ``root``; returns the measured report.

    ``threads`` defaults to 1: the stop checks compare accuracies with thresholds, and another
    thread count changes float summation order and hence, a little, where they trigger.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    try:
        return _build(Path(root), seed, plan or BuildPlan())
    finally:
        torch.set_num_threads(previous)


def _build(root: Path, seed: int, plan: BuildPlan) -> dict:
    t0 = time.time()
    rows = world_rows(root, seed, plan)
    tok = build_tokenizer(root / "tokenizer")
    report = {"seed": seed, "plan": asdict(plan), "lr_schedule": "warmup_cosine",
              "budgets": {"rollout": task.BUDGET, "eval": task.EVAL_BUDGET},
              "split_sizes": {s: len(rows[s]) for s in ("train",) + EVAL_SPLITS}}

    teacher, losses, evals = train_teacher(tok, rows["pool"], rows["val_test"], seed, plan)
    report["teacher"] = save_model(teacher, tok, root / "models" / "teacher", losses, evals)
    report["teacher_seconds"] = round(time.time() - t0, 1)
    student, losses, evals = train_student(tok, rows["pool"], rows["val_test"], rows["val_blind"], seed, plan)
    report["student"] = save_model(student, tok, root / "models" / "student", losses, evals)
    report["train_seconds"] = round(time.time() - t0, 1)

    for name, model in (("teacher", teacher), ("student", student)):
        report[name]["eval"] = evaluate_model(model, tok, root / "models" / name, rows, sampled=name == "student")
    report["gates"] = measure_gates(report)
    report["all_gates_passed"] = all(g["passed"] for g in report["gates"])
    report["build_seconds"] = round(time.time() - t0, 1)
    report["vocab_size"] = len(tok)
    (root / "models" / "world_report.json").write_text(json.dumps(report, indent=2))
    (root / "models" / "README.md").write_text(models_readme(report))
    return report
