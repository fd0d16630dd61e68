"""What a run trains on (the :class:`World`: models, tokenizer, splits) and the order in which it
sees the training prompts (:class:`PromptSampler`)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import model_source, models
from ..config import TrainConfig
from ..tasks import checks, source
from ..tasks.files import EVAL_SPLITS, KNOWN_SPLITS, DataRowError, load_split
from ..vocab import check_same_tokenizer, check_same_vocab, config_vocab_rows, restrict_vocab, shared_vocab


@dataclass
class World:
    """What a run trains on: student, teacher, tokenizer and the task splits (``world.train``,
    ``world.test``, ... name the splits that exist)."""

    student: object
    teacher: object
    tokenizer: object
    splits: dict

    def __getattr__(self, name):
        splits = self.__dict__.get("splits") or {}
        if name in splits:
            return splits[name]
        raise AttributeError(f"this world has no split or attribute {name!r} (splits: {sorted(splits)})")

    @property
    def eval_splits(self) -> list[str]:
        return [s for s in EVAL_SPLITS if s in self.splits]


def load_student_for(cfg: TrainConfig, vocab: int | None = None):
    """A freshly initialised trainable student for ``cfg`` (LoRA init seeded by ``cfg.seed``);
    ``cfg.student_path`` is a local folder or a hub id (:mod:`kdrl_mini.model_source`). ``vocab``
    cuts its logits to the tokenizer's tokens (:func:`kdrl_mini.vocab.restrict_vocab`; None: uncut)."""
    student_dir = model_source.resolve_model(cfg.student_path, "student")
    torch.manual_seed(cfg.seed)
    lora = models.LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha) if cfg.lora_r > 0 else None
    dtype = models.compute_dtype(cfg.compute_dtype, cfg.device)
    student = models.load_student(student_dir, cfg.student_quant, lora, cfg.device, cfg.gradient_checkpointing, dtype)
    return restrict_vocab(student, vocab)


def _max_positions(*folders) -> int | None:
    """The smallest context length the model folders' config.json declare (None if none does)."""
    found = []
    for folder in folders:
        config = json.loads((Path(folder) / "config.json").read_text())  # check_model_dir parsed it already
        for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
            if isinstance(config.get(key), int) and config[key] > 0:
                found.append(config[key])
                break
    return min(found) if found else None


def load_split_checked(data_dir, split: str, tokenizer, max_positions: int | None, budget: int) -> list[dict]:
    """One split's rows, refused with file and line when the models could not use them."""
    path = Path(data_dir) / f"{split}.jsonl"
    if path.is_file():
        checks.check_utf8(path)
    try:
        rows = [dict(r) for r in load_split(data_dir, split)]
    except UnicodeDecodeError as err:  # check_utf8 names the line first; this is a last resort
        raise DataRowError(f"{path}: bytes that are not UTF-8 ({err.reason} at byte {err.start}); save the "
                                 f"file as UTF-8") from None
    checks.check_rows(rows, path, tokenizer, max_positions, budget)
    return rows


def load_dataset_checked(cfg: TrainConfig, tokenizer, max_positions: int | None, budget: int) -> dict:
    """The splits of ``cfg.dataset`` ({"train", "test"[, "ood"]} -> rows), refused with dataset,
    split and row index when the models could not use them."""
    splits = {}
    for name, split in source.load_splits(cfg).items():
        checks.check_rows(split.rows, split.label, tokenizer, max_positions, budget, indexed=True)
        splits[name] = split.rows
    return splits


def load_world(cfg: TrainConfig) -> World:
    """Load models and data named by ``cfg`` (checks paths, rows and vocabularies).

    Models are local folders or hub ids (``kdrl_mini.model_source``); data is the JSONL splits in
    ``cfg.data_dir`` or, when ``cfg.dataset`` is set, splits through ``datasets``
    (``kdrl_mini.tasks.source``). Data rows are checked (``kdrl_mini.tasks.checks``) before any
    weights load, so a bad row is reported in about a second."""
    tok, splits, vocab = load_data(cfg)
    student = load_student_for(cfg, vocab)
    teacher_dir = model_source.resolve_model(cfg.teacher_path, "teacher")
    teacher = models.load_teacher(teacher_dir, cfg.teacher_quant, cfg.device, models.compute_dtype(cfg.compute_dtype, cfg.device))
    check_same_vocab(student, restrict_vocab(teacher, vocab), tok)
    return World(student, teacher, tok, splits)


def load_data(cfg: TrainConfig) -> tuple[object, dict, int | None]:
    """(tokenizer, split name -> checked rows, shared vocabulary or None) for ``cfg``, before any weights
    load: the tokenizers of student and teacher must match and every row must fit both models."""
    student_dir = model_source.resolve_model(cfg.student_path, "student")
    teacher_dir = model_source.resolve_model(cfg.teacher_path, "teacher")
    tok = models.load_tokenizer(student_dir)
    check_same_tokenizer(student_dir, teacher_dir)
    rows = [config_vocab_rows(json.loads((d / "config.json").read_text())) for d in (student_dir, teacher_dir)]
    vocab = shared_vocab(tok, *rows)  # before any weights load; None: one row per token already
    context = _max_positions(student_dir, teacher_dir)
    budget = cfg.max_new_tokens + max(cfg.eval_extra_tokens, 0)  # the larger of the rollout and eval budgets
    if context is not None and budget >= context:  # no prompt could fit: the budget is wrong, not the data
        raise ValueError(f"config fields max_new_tokens={cfg.max_new_tokens} + eval_extra_tokens="
                         f"{cfg.eval_extra_tokens} = {budget} new tokens leave no room for a prompt in the models' "
                         f"context of {context} tokens; set max_new_tokens well below "
                         f"{context - cfg.eval_extra_tokens} (prompts need room too)")
    if cfg.dataset:
        splits = load_dataset_checked(cfg, tok, context, budget)
    else:
        names = ["train"] + [s for s in KNOWN_SPLITS[1:] if (Path(cfg.data_dir) / f"{s}.jsonl").is_file()]
        splits = {s: load_split_checked(cfg.data_dir, s, tok, context, budget) for s in names}
    return tok, splits, vocab


class PromptSampler:
    """Seeded epoch-wise shuffling over the train prompts; its state is two integers."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order()

    def _order(self):
        self.order = list(range(self.n))
        random.Random(self.seed * 100003 + self.epoch).shuffle(self.order)

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order()
            out.append(self.order[self.pos])
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load(self, state: dict):
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order()
