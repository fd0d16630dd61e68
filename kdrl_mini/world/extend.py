"""Extending a built world without rebuilding it: a student given more warm-up (a stronger starting
point, closer to the paper's distilled students), and the ``mix`` eval split drawn like ``train``.

Both re-draw the build's pre-training pool from the written splits (:func:`~.build.draw_pool`),
so a warm-up continues on the very rows the shipped student saw and ``mix`` shares no prompt with
them or with any other split. Deterministic: the same call writes the same files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..rollout import greedy_eval
from ..tasks.files import EVAL_SPLITS, read_jsonl, write_jsonl
from . import task
from .build import draw_pool, save_model, sft_steps, student_pool
from .specs import BuildPlan


def build_rows(root: Path, seed: int = 0, plan: BuildPlan | None = None) -> dict[str, list[dict]]:
    """Every split of the world under ``root`` plus the build's pool of ``seed`` (re-drawn)."""
    rows = {s: read_jsonl(root / f"{s}.jsonl") for s in ("train",) + EVAL_SPLITS}
    return {**rows, **draw_pool(rows, seed, plan or BuildPlan())}


def write_mix_split(root: str | Path, n: int = 1000, seed: int = 6, build_seed: int = 0) -> Path:
    """``root/mix.jsonl``: ``n`` rows drawn like ``train`` (30% cross 100: its strata are the
    ``test`` and ``blind`` kinds of chain), disjoint from every split and from the pre-training pool."""
    root = Path(root)
    rows = build_rows(root, build_seed)
    taken = {r["prompt"] for name in ("train", "pool", "val_test", "val_blind") + EVAL_SPLITS for r in rows[name]}
    path = root / "mix.jsonl"
    write_jsonl(path, task.make_mixed_split(n, seed, task.MIXES["train"], exclude=taken))
    return path


def warm_student(root: str | Path, steps: int = 60, lr: float = 2e-3, warmup: int = 10, seed: int = 1001,
                 build_seed: int = 0, name: str | None = None) -> Path:
    """``root/models/<name>``: the shipped student after ``steps`` more SFT steps on its own warm-up
    rows (10% crossing 100; concise and verbose solutions at random), AdamW at ``lr`` with a
    warm-up + cosine schedule, seeded; ``warm.json`` beside it records the recipe, seconds and the
    greedy accuracy on the first 200 rows of each split at the rollout budget."""
    root, plan = Path(root), BuildPlan()
    out = root / "models" / (name or f"student-w{steps}")
    tok = AutoTokenizer.from_pretrained(root / "models" / "student")
    model = AutoModelForCausalLM.from_pretrained(root / "models" / "student", dtype=torch.float32)
    rows = student_pool(build_rows(root, build_seed, plan)["pool"], plan.student_crossing_share)
    t0 = time.time()
    losses, _ = sft_steps(model, tok, rows, ("concise", "solution"), steps, plan.batch_size, lr, seed, "warm",
                          warmup=warmup)
    seconds = time.time() - t0
    info = save_model(model, tok, out, losses, [])
    accuracy = {s: greedy_eval(model, tok, read_jsonl(root / f"{s}.jsonl")[:200], max_new_tokens=task.BUDGET,
                               batch_size=200)["accuracy"] for s in ("test", "blind")}
    recipe = {"base": "models/student", "extra_steps": steps, "lr": lr, "warmup": warmup, "seed": seed,
              "batch": plan.batch_size, "schedule": "schedules.warmup_cosine (floor 0.02)", "seconds": round(seconds, 1),
              "final_train_loss": info["final_train_loss"], "greedy_accuracy_200_rows_at_48": accuracy}
    (out / "warm.json").write_text(json.dumps(recipe, indent=1))
    return out
