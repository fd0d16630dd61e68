"""Building the tiny world: tokenizer, a teacher with a blind spot and a weak student, on CPU.

``build_world`` (CLI: ``kdrl-mini build-world``) writes the splits of :mod:`kdrl_mini.tasks`
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
import math
import random
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import tasks
from .rollout import greedy_eval, sampled_eval, teacher_forced_batch

SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = string.digits + " \n+-*/=#.,:?()" + string.ascii_lowercase + string.ascii_uppercase
GROUP = 8  # samples per prompt for the per-sample accuracy and pass@G gates


def build_tokenizer(out_dir: str | Path):
    """A character-level tokenizer (one token per character) saved as a HF tokenizer folder."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + list(CHARS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>", padding_side="left")
    tok.save_pretrained(str(out_dir))
    return tok


@dataclass
class TinyModelSpec:
    """A small Llama shape (RMSNorm, SwiGLU, RoPE, grouped-query attention)."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 384


TEACHER_SPEC = TinyModelSpec(hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=512)
# Every linear layer's input size is a multiple of 64: bitsandbytes' 4-bit CPU kernels are wrong
# otherwise (see models._refuse_misaligned_4bit).
STUDENT_SPEC = TinyModelSpec(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=256)


@dataclass
class BuildPlan:
    """Sizes, step caps and stop criteria of a build (the defaults build the shipped world).

    teacher_stop: teacher stops once greedy validation accuracy on chains below 100 reaches it.
    student_crossing_share: share of the student's warm-up rows whose total crosses 100.
    student_stop_test: student stops at the first check whose greedy validation accuracy on
        chains below 100 reaches this ...
    student_stop_blind: ... and whose per-sample accuracy on crossing chains reaches this.
    """

    pool_size: int = 40000
    pool_crossing_4: int = 2500  # only ~4,500 distinct 4-operand crossing prompts exist
    val_size: int = 200
    batch_size: int = 64
    teacher_steps: int = 4000
    teacher_lr: float = 2e-3
    teacher_eval_every: int = 250
    teacher_stop: float = 0.98
    student_steps: int = 1500
    student_lr: float = 2e-3
    student_eval_every: int = 10
    student_crossing_share: float = 0.1
    student_stop_test: float = 0.2
    student_stop_blind: float = 0.03
    check_seed: int = 1234


def tiny_llama(spec: TinyModelSpec, tokenizer, seed: int):
    """A randomly initialised LlamaForCausalLM of ``spec`` for ``tokenizer``.

    Llama rather than Qwen2: transformers maps a Qwen2 config to its byte-level BPE tokenizer
    class, which would silently drop our character tokenizer's whitespace on reload.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=256, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, rope_theta=10000.0, **asdict(spec))
    return LlamaForCausalLM(cfg)


def cosine_lr(step: int, steps: int, warmup: int) -> float:
    """Learning-rate scale: linear warm-up, cosine decay, floor 0.02."""
    scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
    return max(scale, 0.02)


def sft_loss(model, batch) -> torch.Tensor:
    """Mean negative log-likelihood of the completion tokens (prompt tokens are not scored)."""
    pos = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    P = batch.prompt_len
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos,
                   logits_to_keep=batch.input_ids.shape[1] - P + 1).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.input_ids[:, P:, None]).squeeze(-1)
    return -(logp * batch.completion_mask).sum() / batch.completion_mask.sum()


def sft_steps(model, tokenizer, rows: list[dict], fields: tuple[str, ...], steps: int, batch_size: int,
              lr: float, seed: int, desc: str, warmup: int = 50, check=None, eval_every: int = 250,
              ) -> tuple[list[float], list[dict]]:
    """Supervised training on ``row[field]`` completions (cosine LR); each example uses one of
    ``fields`` at random (a mix of solution styles).

    Every ``eval_every`` steps ``check(model)`` returns ``(metrics, stop)``; training stops at the
    first check that says stop. Returns (per-step losses, log of the checks).
    """
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    losses, evals = [], []
    model.train()
    bar = tqdm(range(steps), desc=desc, leave=False, mininterval=30)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr * cosine_lr(step, steps, warmup)
        chunk = rng.sample(rows, batch_size)
        targets = [r[rng.choice(fields)] for r in chunk]
        batch = teacher_forced_batch(tokenizer, [r["prompt"] for r in chunk], targets, "cpu")
        loss = sft_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if check is not None and (step + 1) % eval_every == 0:
            metrics, stop = check(model)
            evals.append({"step": step + 1, "loss": round(loss.item(), 4), **metrics})
            print(f"[{desc}] step {step + 1}: loss {loss.item():.4f} {metrics}", flush=True)
            model.train()
            if stop:
                break
    model.eval()
    return losses, evals


def sampled_accuracy(model, tokenizer, rows: list[dict], group: int = GROUP,
                     max_new_tokens: int = tasks.BUDGET, batch_prompts: int = 50) -> dict:
    """Per-sample accuracy (temperature 1) and pass@group over ``rows`` (:func:`rollout.sampled_eval`)."""
    out = sampled_eval(model, tokenizer, rows, group, max_new_tokens, temperature=1.0, batch_prompts=batch_prompts)
    return {k: out[k] for k in ("per_sample", f"pass@{group}", "n")}


def teacher_check(tok, val_test: list[dict], stop_at: float):
    """Stop the teacher once greedy accuracy on chains below 100 reaches ``stop_at``."""
    def check(model):
        acc = greedy_eval(model, tok, val_test, max_new_tokens=tasks.EVAL_BUDGET)["accuracy"]
        return {"val_test": acc}, acc >= stop_at
    return check


def student_check(tok, val_test: list[dict], val_blind: list[dict], plan: BuildPlan):
    """Stop the student at the first check that is weak-but-not-hopeless in-domain and finds
    correct crossings by sampling (the blind sample is measured only once the first holds)."""
    def check(model):
        acc = greedy_eval(model, tok, val_test, max_new_tokens=tasks.EVAL_BUDGET)["accuracy"]
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
    n_cross = round(plan.pool_size * tasks.TRAIN_CROSSING_SHARE)
    n_range = plan.pool_size - n_cross
    mix = ((tasks.IN_DOMAIN, n_range / 2), (tasks.IN_DOMAIN_LONG, n_range / 2),
           (tasks.CROSSING, plan.pool_crossing_4), (tasks.CROSSING_LONG, n_cross - plan.pool_crossing_4))
    mix = tuple((spec, count / plan.pool_size) for spec, count in mix)
    return tasks.make_mixed_split(plan.pool_size, seed, mix, exclude=exclude)


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
    paths = tasks.build_world_data(root, seed=seed)
    rows = {name: tasks.read_jsonl(path) for name, path in paths.items()}
    exclude = {r["prompt"] for name in tasks.EVAL_SPLITS for r in rows[name]}
    pool = pretraining_pool(plan, seed + 100, exclude)
    val_test = [r for r in pool if not r["crossing"]][:plan.val_size]
    val_blind = [r for r in pool if r["crossing"]][:plan.val_size]
    held_out = {r["prompt"] for r in val_test + val_blind}
    rows.update(pool=[r for r in pool if r["prompt"] not in held_out], val_test=val_test, val_blind=val_blind)
    return rows


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
    from .world_report import evaluate_model, measure_gates, models_readme  # measuring needs the specs above

    t0 = time.time()
    rows = world_rows(root, seed, plan)
    tok = build_tokenizer(root / "tokenizer")
    report = {"seed": seed, "plan": asdict(plan), "budgets": {"rollout": tasks.BUDGET, "eval": tasks.EVAL_BUDGET},
              "split_sizes": {s: len(rows[s]) for s in ("train",) + tasks.EVAL_SPLITS}}

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
