"""Building the shipped tiny world: tokenizer, teacher and weak student, trained here on CPU.

``build_world`` (CLI: ``kdrl-mini build-world``) writes ``data/{train,test,ood}.jsonl``,
``data/tokenizer``, ``data/models/teacher`` and ``data/models/student`` from a seed:
1. a character-level tokenizer (``tokenizers`` WordLevel, saved as a HF tokenizer folder);
2. a Llama-architecture teacher pre-trained on the verbose worked solutions until it is strong in-domain;
3. a smaller Llama student given a brief warm-up on concise solutions, so it is weak but not
   hopeless (RL has signal but is sample-inefficient).
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
from .rollout import greedy_eval, teacher_forced_batch, token_logprobs

SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = string.digits + " \n+-*/=#.,:?()" + string.ascii_lowercase + string.ascii_uppercase


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


def sft_steps(model, tokenizer, rows: list[dict], field: str | tuple[str, ...], steps: int, batch_size: int, lr: float,
              seed: int, desc: str, warmup: int = 50, val_rows: list[dict] | None = None,
              eval_every: int = 250, stop_at: float | None = None) -> tuple[list[float], list[dict]]:
    """Supervised training on ``row[field]`` completions (cosine LR); with several fields, each
    example uses one of them at random (a mix of solution styles).

    Every ``eval_every`` steps greedy accuracy on ``val_rows`` is measured; training stops early
    once it reaches ``stop_at``. Returns (per-step losses, evaluation log).
    """
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    losses, evals = [], []
    model.train()
    bar = tqdm(range(steps), desc=desc, leave=False)
    for step in bar:
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr * max(scale, 0.02)
        chunk = rng.sample(rows, batch_size)
        fields = (field,) if isinstance(field, str) else field
        targets = [r[rng.choice(fields)] for r in chunk]
        batch = teacher_forced_batch(tokenizer, [r["prompt"] for r in chunk], targets,
                                     next(model.parameters()).device)
        logp = token_logprobs(model, batch)
        loss = -(logp * batch.completion_mask).sum() / batch.completion_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if val_rows and (step + 1) % eval_every == 0:
            acc = greedy_eval(model, tokenizer, val_rows)["accuracy"]
            evals.append({"step": step + 1, "val_accuracy": acc, "loss": loss.item()})
            print(f"[{desc}] step {step + 1}: loss {loss.item():.4f} val accuracy {acc:.3f}", flush=True)
            model.train()
            if stop_at is not None and acc >= stop_at:
                break
    model.eval()
    return losses, evals


def train_teacher(tok, pool: list[dict], val: list[dict], seed: int, steps: int, batch_size: int):
    """The teacher: SFT on verbose solutions until validation accuracy reaches 0.97."""
    teacher = tiny_llama(TEACHER_SPEC, tok, seed)
    losses, evals = sft_steps(teacher, tok, pool, "solution", steps, batch_size, 2e-3, seed, "teacher",
                              val_rows=val, eval_every=250, stop_at=0.97)
    return teacher, losses, evals


def train_student(tok, pool: list[dict], val: list[dict], seed: int, steps: int, batch_size: int):
    """The student: a brief warm-up on a mix of concise and verbose solutions, stopped at the
    first check with >= 20% validation accuracy ("weak but not hopeless"). Knowing both styles,
    it has no length preference of its own: what it drifts to is what training asks for."""
    student = tiny_llama(STUDENT_SPEC, tok, seed + 1)
    losses, evals = sft_steps(student, tok, pool, ("concise", "solution"), steps, batch_size, 2e-3, seed + 1,
                              "student", warmup=20, val_rows=val, eval_every=10, stop_at=0.20)
    return student, losses, evals


def build_world(root: str | Path = "data", seed: int = 0, teacher_steps: int = 4000, student_steps: int = 1500,
                pretrain_pool: int = 60000, batch_size: int = 64, threads: int | None = None) -> dict:
    """Build and save the whole tiny world under ``root``; returns the measured report."""
    if threads:
        torch.set_num_threads(threads)
    root = Path(root)
    t0 = time.time()
    paths = tasks.build_world_data(root, seed=seed)
    test_rows = [json.loads(l) for l in open(paths["test"])]
    ood_rows = [json.loads(l) for l in open(paths["ood"])]
    exclude = {r["prompt"] for r in test_rows}
    pool = tasks.make_split(pretrain_pool, seed + 100, exclude=exclude)
    tok = build_tokenizer(root / "tokenizer")

    val, pool = pool[:200], pool[200:]
    teacher, t_losses, t_evals = train_teacher(tok, pool, val, seed, teacher_steps, batch_size)
    student, s_losses, s_evals = train_student(tok, pool, val, seed, student_steps, batch_size)

    report = {"seed": seed, "teacher_steps": teacher_steps, "student_steps": student_steps,
              "batch_size": batch_size, "build_seconds": None}
    for name, model, losses, evals in (("teacher", teacher, t_losses, t_evals),
                                       ("student", student, s_losses, s_evals)):
        out = root / "models" / name
        model.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
        report[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "size_mb": sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20,
            "steps_trained": len(losses),
            "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
            "val_curve": evals,
            "test": greedy_eval(model, tok, test_rows),
            "ood": greedy_eval(model, tok, ood_rows, max_new_tokens=80),
        }
    report["build_seconds"] = round(time.time() - t0, 1)
    report["vocab_size"] = len(tok)
    (root / "models" / "world_report.json").write_text(json.dumps(report, indent=2))
    (root / "models" / "README.md").write_text(models_readme(report))
    return report


def models_readme(report: dict) -> str:
    """``data/models/README.md`` from the build report (every number measured by the build)."""
    rows = []
    for name in ("teacher", "student"):
        r = report[name]
        rows.append(f"| {name} | {r['params']:,} | {r['size_mb']:.1f} MB | {r['steps_trained']} | "
                    f"{r['test']['accuracy']:.3f} | {r['ood']['accuracy']:.3f} | "
                    f"{r['test']['mean_length']:.1f} | {r['ood']['mean_length']:.1f} |")
    t, s = report["teacher"], report["student"]
    return f"""# The shipped tiny world: teacher and student

Built by `kdrl-mini build-world --seed {report['seed']}` (equivalently `kdrl_mini.world.build_world("data", seed={report['seed']})`)
in {report['build_seconds'] / 60:.0f} minutes on 2 CPU cores. Every number below comes from that build
(`data/models/world_report.json`); accuracies are greedy decoding scored by `kdrl_mini.rewards`
on the first {t['test']['n']} rows of `data/test.jsonl` (in-domain: 4 operands) and
`data/ood.jsonl` (out-of-domain: starts at 90-99, totals cross 100).
The build stops at wall-clock-independent criteria (validation accuracy checks), so a rebuild on
another CPU retraces the same steps; timing varies with the machine and its load.

| model | parameters | safetensors | SFT steps | test accuracy | ood accuracy | test length (tokens) | ood length (tokens) |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

- Both are `LlamaForCausalLM` with the same character-level tokenizer ({report['vocab_size']} tokens,
  `data/tokenizer`, also saved beside each model). Teacher: hidden {TEACHER_SPEC.hidden_size},
  {TEACHER_SPEC.num_hidden_layers} layers; student: hidden {STUDENT_SPEC.hidden_size}, {STUDENT_SPEC.num_hidden_layers} layers.
- The teacher was trained on verbose solutions (a redundant `check` line before the answer), so
  its answers are longer than needed; training stopped once validation accuracy reached 0.97.
- The student had a brief warm-up on a 50/50 mix of concise and verbose solutions and stopped at
  the first check with validation accuracy >= 0.20: weak but not hopeless, so RL has signal but is
  sample-inefficient.
- Load with `AutoModelForCausalLM.from_pretrained("data/models/teacher")` and
  `AutoTokenizer.from_pretrained("data/models/teacher")`, or through `kdrl_mini.models`
  (`load_teacher(path, "8bit")`, `load_student(path, "4bit", LoraSpec())`).

Sample teacher completion (test):

```
{t['test']['samples'][0]}
```

Sample student completion (test):

```
{s['test']['samples'][0]}
```
"""
