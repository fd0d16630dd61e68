"""Evaluation: greedy accuracy, length and truncation of a split at its token budget; the exact KL to
the teacher on a fixed probe set.

The kit's trainer and the TRL engine both write their eval rows with :func:`evaluate_splits`. The probe
set (:func:`probe_batch`) is the teacher's greedy answers to the first ``probe_size`` rows of
``probe_split``: the same token positions for every run and step, so :func:`probe_kl` measures how far
any algorithm (GRPO included) has moved the student toward or away from the teacher.
"""

from __future__ import annotations

import torch

from .batch import Batch
from .config import TrainConfig
from .rollout import format_prompts, greedy_eval_budgets, sample
from .runs import metrics
from .scoring import completion_hidden, student_token_stats


@torch.no_grad()
def evaluate_splits(model, tokenizer, cfg: TrainConfig, splits: dict, names: list[str], step: int,
                    n: int | None = None) -> list[dict]:
    """The eval rows of ``names`` (in that order): each split is decoded once, at the largest budget any
    name asks of it; smaller budgets are read off that decode (``rollout.greedy_eval_budgets``), so
    ``mix@64,mix@48`` costs one 64-token decode."""
    wanted = {}
    for split in names:
        name, budget = cfg.eval_budget(split)
        wanted.setdefault(name, {})[budget] = split
    rows = {}
    for name, by_budget in wanted.items():
        results = greedy_eval_budgets(model, tokenizer, splits[name][: n or cfg.eval_size], tuple(by_budget),
                                      batch_size=cfg.eval_batch_size, chat_template=cfg.chat_template,
                                      suffix=cfg.prompt_suffix, checker=cfg.answer_checker)
        rows.update({split: metrics.eval_row(step, split, results[b]) for b, split in by_budget.items()})
    return [rows[split] for split in names]


@torch.no_grad()
def probe_batch(teacher, tokenizer, cfg: TrainConfig, splits: dict) -> Batch:
    """The fixed probe set: the teacher's greedy answers [probe_size, T] to the first ``cfg.probe_size``
    rows of ``cfg.probe_split`` (``"mix@64"``: ``mix`` at a 64-token budget)."""
    name, budget = cfg.eval_budget(cfg.probe_split)
    prompts = format_prompts(tokenizer, [r["prompt"] for r in splits[name][:cfg.probe_size]], cfg.chat_template,
                             cfg.prompt_suffix)
    teacher.eval()
    return sample(teacher, tokenizer, prompts, max_new_tokens=budget, greedy=True)


@torch.no_grad()
def probe_kl(student, teacher, batch: Batch, rows_per_call: int = 100) -> torch.Tensor:
    r"""Exact KL(student || teacher) per response token on the probe set, at temperature 1 (the models'
    own distributions), teacher-forced on the probe's tokens; a 0-dim tensor:

        \frac{1}{\sum_{i,t} m_{it}} \sum_{i,t} m_{it} \sum_v p_\theta(v | x_{i,<t}) \log \frac{p_\theta(v | x_{i,<t})}{q(v | x_{i,<t})}
    """
    total = torch.zeros((), device=batch.completion_mask.device)
    for i in range(0, batch.input_ids.shape[0], rows_per_call):
        part = batch.rows(slice(i, i + rows_per_call))
        _, _, kl, _ = student_token_stats(student, part, 1.0, teacher, completion_hidden(teacher, part))
        total += (kl * part.completion_mask).sum()
    return total / batch.completion_mask.sum().clamp(min=1)
