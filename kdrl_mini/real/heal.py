"""Healing a pruned student: a short distillation on the teacher's own answers, cached on disk.

Dropping every other layer of SmolLM2-135M-Instruct leaves a student that writes word salad
(reward 0, ~6.5 nats/token from its teacher), so no CPU-sized RL run can show it learning.
The classic repair is a little distillation before RL:

1. **teacher answers** (:func:`teacher_answers`): the teacher answers ``n_prompts`` training
   word problems greedily (chat template, fp32). Each answer is cut right after its first
   ``#### <number>`` line (generation of a row stops there, which halves the labelling cost;
   SmolLM2 otherwise repeats its last lines until the budget runs out). Answers without such a
   line are dropped (``keep="formatted"``); right and wrong answers are both kept: the student
   learns to imitate the teacher, mistakes included. ``keep="correct"`` keeps only the right
   ones (rejection-sampled distillation; the same labels, filtered).
2. **SFT** (:func:`fit`): the fp32 student is fine-tuned on those answers (token-mean negative
   log-likelihood of the teacher's tokens, i.e. forward KL on teacher samples), every decoder
   layer and norm trainable, the tied embedding / LM head frozen (it is the teacher's already,
   and its gradient is the costliest matmul). AdamW, linear warm-up then cosine decay.

Both stages are cached: the answers as one JSONL file, the healed model as a normal safetensors
folder (the student's tokenizer files, byte for byte) with a marker written last. Each is built
under a temporary name and moved into place in one ``os.replace``, so an interrupted build is
never used and a finished one is reused (:func:`heal`). ``kdrl_mini.real.pair.materialize_healed``
applies this to the SmolLM2 pair; ``docs/real_pair.md`` has the measured recipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import StoppingCriteriaList

from .. import models, sft
from ..kl import exact_kl
from ..rewards import batch_rewards
from ..rollout import encode_prompts, eos_token_ids, format_prompts, sample, teacher_forced_batch
from ..schedules import warmup_cosine
from ..scoring import token_logprobs
from .cache import is_built, save_built

# A final-answer line: "#### 42" (commas, a sign and decimals allowed), then a newline or the end.
ANSWER_LINE = re.compile(r"^####[ \t]*-?[\d,]*\d(?:\.\d+)?[ \t]*(?:\n|$)", re.MULTILINE)
ANSWER_LINE_CLOSED = re.compile(r"^####[ \t]*-?[\d,]*\d(?:\.\d+)?[ \t]*\n", re.MULTILINE)


@dataclass(frozen=True)
class HealSpec:
    """The heal recipe; every field is part of the cache key (a changed field rebuilds).

    n_prompts: training prompts the teacher answers; max_new_tokens: its answer budget;
    label_batch: prompts per teacher ``generate`` call; steps x batch_size: SFT examples seen
    (the answers are cycled in seeded epochs); lr: peak learning rate (``warmup`` linear steps,
    then cosine decay to ``lr * min_lr_ratio``); lora_r: 0 trains the decoder layers fully,
    > 0 trains LoRA adapters of that rank instead (merged before saving); keep: "formatted"
    (answers with a ``#### n`` line), "correct" (formatted and right: rejection-sampled
    distillation; the same labels as "formatted", filtered) or "all".
    """

    n_prompts: int = 200
    max_new_tokens: int = 64
    label_batch: int = 20
    steps: int = 40
    batch_size: int = 8
    lr: float = 1e-4
    warmup: int = 4
    min_lr_ratio: float = 0.1
    lora_r: int = 0
    keep: str = "formatted"
    seed: int = 0

    def __post_init__(self):
        for name in ("n_prompts", "max_new_tokens", "label_batch", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"heal spec {name}={getattr(self, name)} must be >= 1")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError(f"heal spec lr={self.lr} must be a positive number")
        if self.keep not in ("formatted", "correct", "all"):
            raise ValueError(f"heal spec keep={self.keep!r}: choose 'formatted', 'correct' or 'all'")
        if self.lora_r < 0 or self.warmup < 0:
            raise ValueError("heal spec lora_r and warmup must be >= 0")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ 1. the teacher's answers
def cut_after_answer(text: str) -> str | None:
    """``text`` up to and including its first ``#### <number>`` line; None if it has none.

    >>> cut_after_answer("3 + 4 = 7\\n#### 7\\nTom has 7.\\n#### 7")
    '3 + 4 = 7\\n#### 7'
    """
    m = ANSWER_LINE.search(text)
    return None if m is None else text[:m.end()].rstrip()


class _StopAfterAnswer:
    """A ``generate`` stopping criterion: a row is done once it holds a closed ``#### n`` line."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([ANSWER_LINE_CLOSED.search(t) is not None for t in texts], device=input_ids.device)


@torch.no_grad()
def teacher_answers(teacher, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 20,
                    progress: bool = True, chat_template: bool = True) -> list[str]:
    """The teacher's greedy answer to each prompt, cut after its first ``#### n`` line (the
    whole text when it has none). A row stops generating at that line; a batch stops when all
    its rows have (or at ``max_new_tokens``)."""
    teacher.eval()
    eos = eos_token_ids(teacher, tokenizer)
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="heal: teacher answers", disable=not progress,
                  unit="batch"):
        texts = format_prompts(tokenizer, prompts[i:i + batch_size], chat_template)
        ids, attn = encode_prompts(tokenizer, texts, next(teacher.parameters()).device)
        gen = teacher.generate(
            input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens, do_sample=False,
            temperature=None, top_k=None, top_p=None, min_p=None, typical_p=1.0, repetition_penalty=1.0,
            no_repeat_ngram_size=0, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
            stopping_criteria=StoppingCriteriaList([_StopAfterAnswer(tokenizer, ids.shape[1])]))
        for text in tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True):
            out.append(cut_after_answer(text) or text.strip())
    return out


def build_heal_data(teacher_dir: str | Path, rows: list[dict], out_file: str | Path, spec: HealSpec,
                    progress: bool = True, tokenizer=None, chat_template: bool = True) -> list[dict]:
    """The heal examples, cached in ``out_file`` (JSONL, written atomically): the first
    ``spec.n_prompts`` rows, each with the teacher's ``target`` answer and whether it is
    ``correct``; filtered by ``spec.keep`` (the file holds the "formatted" set for
    ``keep="correct"``, which is filtered when read). A finished file is read back, not rebuilt.
    ``tokenizer``: the pair's shared tokenizer (default: the teacher folder's)."""
    out_file = Path(out_file)
    if out_file.is_file():
        data = [json.loads(line) for line in out_file.read_text().splitlines() if line.strip()]
        return _only_correct(data) if spec.keep == "correct" else data
    rows = rows[:spec.n_prompts]
    tok = tokenizer or models.load_tokenizer(teacher_dir)
    teacher = models.load_teacher(teacher_dir, "none")
    targets = teacher_answers(teacher, tok, [r["prompt"] for r in rows], spec.max_new_tokens, spec.label_batch,
                              progress, chat_template)
    del teacher
    correct = batch_rewards(targets, [r["answer"] for r in rows]).tolist()
    data = [{"prompt": r["prompt"], "answer": r["answer"], "target": t, "correct": bool(c),
             "formatted": cut_after_answer(t) is not None} for r, t, c in zip(rows, targets, correct)]
    if spec.keep in ("formatted", "correct"):
        data = [d for d in data if d["formatted"]]
    if not data:
        raise ValueError(f"the teacher gave no answer with a '#### <number>' line on {len(rows)} prompts; "
                         f"raise max_new_tokens (now {spec.max_new_tokens}) or use keep='all'")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + f".tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(d) + "\n" for d in data))
    os.replace(tmp, out_file)
    return _only_correct(data) if spec.keep == "correct" else data


def _only_correct(data: list[dict]) -> list[dict]:
    right = [d for d in data if d["correct"]]
    if not right:
        raise ValueError(f"none of the teacher's {len(data)} answers is right; use keep='formatted'")
    return right


# ------------------------------------------------------------------ 2. SFT on the answers
def trainable_student(student_dir: str | Path, lora_r: int = 0):
    """The fp32 student to heal: decoder layers and norms trainable, embeddings / LM head frozen
    (``lora_r=0``), or LoRA adapters of rank ``lora_r`` on every linear layer of each block."""
    if lora_r:
        return models.load_student(student_dir, "none", models.LoraSpec(r=lora_r, alpha=2 * lora_r))
    model = models.load_student(student_dir, "none", lora=None)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied with the LM head
    return model


def fit(model, tokenizer, data: list[dict], spec: HealSpec, progress: bool = True,
        chat_template: bool = True) -> list[float]:
    """``spec.steps`` AdamW steps of :func:`kdrl_mini.sft.sft_loss` on ``data`` (seeded epoch-wise
    shuffles, batches of ``spec.batch_size``), learning rate :func:`kdrl_mini.schedules.warmup_cosine`;
    returns the loss of every step."""
    rng = random.Random(spec.seed)
    order: list[int] = []
    device = next(model.parameters()).device

    def batch_at(step):
        nonlocal order
        while len(order) < spec.batch_size:
            epoch = list(range(len(data)))
            rng.shuffle(epoch)
            order += epoch
        chunk, order = [data[i] for i in order[:spec.batch_size]], order[spec.batch_size:]
        prompts = format_prompts(tokenizer, [e["prompt"] for e in chunk], chat_template)
        return teacher_forced_batch(tokenizer, prompts, [e["target"] for e in chunk], device)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.lr, weight_decay=0.0)
    lr_at = warmup_cosine(spec.lr, spec.steps, spec.warmup, spec.min_lr_ratio)
    return sft.fit(model, opt, batch_at, spec.steps, lr_at, desc="heal: SFT on teacher answers", progress=progress)[0]


def heal(teacher_dir: str | Path, student_dir: str | Path, rows: list[dict], out_dir: str | Path,
         spec: HealSpec = HealSpec(), progress: bool = True, source: dict | None = None,
         chat_template: bool = True) -> Path:
    """Write the healed student to ``out_dir`` (cached) and return it.

    ``rows``: training word problems (``prompt``, ``answer``); keep them disjoint from the
    evaluation rows. ``source``: anything else that identifies the inputs (e.g. the pair's
    build markers); it joins ``spec`` and a digest of the prompts in the marker, and a folder
    whose marker matches is returned at once, without loading a model. The teacher's answers
    are cached next to ``out_dir`` (``<out_dir>.answers-<key>.jsonl``), so a build interrupted
    while fine-tuning does not label again. ``chat_template=False`` for base models (prompts
    as they are), e.g. the tiny world.
    """
    out_dir = Path(out_dir)
    prompts_digest = _digest([r["prompt"] for r in rows[:spec.n_prompts]])
    expect = {"heal_spec": dataclasses.asdict(spec), "prompts": prompts_digest, "source": source or {},
              "student_dir_name": Path(student_dir).name, "teacher_dir_name": Path(teacher_dir).name}
    if not chat_template:
        expect["chat_template"] = False
    if is_built(out_dir, expect):
        return out_dir
    t0 = time.perf_counter()
    label_key = _digest({"prompts": prompts_digest, "source": source or {}, "teacher": Path(teacher_dir).name,
                         **{k: getattr(spec, k) for k in ("n_prompts", "max_new_tokens")},
                         # "correct" filters the "formatted" labels: the same teacher run, the same file
                         "keep": "formatted" if spec.keep == "correct" else spec.keep,
                         **({} if chat_template else {"chat_template": False})})
    tok = models.load_tokenizer(student_dir)
    data = build_heal_data(teacher_dir, rows, out_dir.with_name(f"{out_dir.name}.answers-{label_key}.jsonl"),
                           spec, progress, tok, chat_template)
    t_label = time.perf_counter() - t0
    torch.manual_seed(spec.seed)
    model = trainable_student(student_dir, spec.lora_r)
    losses = fit(model, tok, data, spec, progress, chat_template)
    if spec.lora_r:
        model = model.merge_and_unload()
    t_fit = time.perf_counter() - t0 - t_label
    report = {"examples": len(data), "teacher_correct": sum(d["correct"] for d in data),
              "loss_first": losses[0], "loss_last": losses[-1], "losses": [round(x, 4) for x in losses],
              "label_seconds": round(t_label, 1), "fit_seconds": round(t_fit, 1),
              "layers": model.config.num_hidden_layers}
    save_built(out_dir, model, {**expect, **report}, tokenizer_from=student_dir)
    return out_dir


# ------------------------------------------------------------------ measuring a student
@torch.no_grad()
def kl_to_teacher(student, teacher, tokenizer, prompts: list[str], max_new_tokens: int = 48) -> float:
    """Exact KL(student || teacher) per token (nats), token-weighted, on the student's own greedy
    answers to ``prompts`` (chat template): how far the student's next-token distributions are
    from the teacher's where the student actually goes."""
    texts = format_prompts(tokenizer, prompts, chat_template=True)
    batch = sample(student, tokenizer, texts, max_new_tokens=max_new_tokens, greedy=True)
    _, ls = token_logprobs(student, batch, return_logits=True)
    _, lt = token_logprobs(teacher, batch, return_logits=True)
    kl = exact_kl(ls, lt)
    mask = batch.completion_mask.bool()
    return float(kl[mask].mean())
