"""Evaluation: greedy accuracy, length and truncation of a split at its token budget.

The kit's trainer and the TRL engine both write their eval rows with :func:`evaluate_split`.
"""

from __future__ import annotations

import torch

from .config import TrainConfig
from .rollout import greedy_eval
from .runs import metrics


@torch.no_grad()
def evaluate_split(model, tokenizer, cfg: TrainConfig, splits: dict, split: str, step: int, n: int | None = None) -> dict:
    """The eval row of ``split`` after ``step`` steps: greedy accuracy, length and truncation of ``model`` on
    its first ``n`` rows (None: ``cfg.eval_size``) at its budget (``"test@64"``: ``test`` at 64 new tokens)."""
    name, budget = cfg.eval_budget(split)
    r = greedy_eval(model, tokenizer, splits[name][: n or cfg.eval_size], max_new_tokens=budget,
                    batch_size=cfg.eval_batch_size, chat_template=cfg.chat_template, suffix=cfg.prompt_suffix,
                    checker=cfg.answer_checker)
    return metrics.eval_row(step, split, r)
