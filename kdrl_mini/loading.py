"""What a run trains on (the :class:`World`: models, tokenizer, splits) and the order in which it
sees the training prompts (:class:`PromptSampler`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from . import models, tasks
from .config import TrainConfig

EVAL_SPLITS = ("test", "blind", "ood", "ood_control")


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


def load_student_for(cfg: TrainConfig):
    """A freshly initialised trainable student for ``cfg`` (LoRA init seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    lora = models.LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha) if cfg.lora_r > 0 else None
    return models.load_student(cfg.student_path, cfg.student_quant, lora, cfg.device, cfg.gradient_checkpointing)


def load_world(cfg: TrainConfig) -> World:
    """Load models and data named by ``cfg`` (checks paths, rows and vocabularies)."""
    tok = models.load_tokenizer(models.check_model_dir(cfg.student_path, "student"))
    models.check_same_tokenizer(cfg.student_path, models.check_model_dir(cfg.teacher_path, "teacher"))
    student = load_student_for(cfg)
    teacher = models.load_teacher(cfg.teacher_path, cfg.teacher_quant, cfg.device)
    models.check_same_vocab(student, teacher, tok)
    names = ["train"] + [s for s in EVAL_SPLITS if (Path(cfg.data_dir) / f"{s}.jsonl").is_file()]
    return World(student, teacher, tok, {s: [dict(r) for r in tasks.load_split(cfg.data_dir, s)] for s in names})


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
