"""Schedules for the KL coefficient beta (imitate the teacher early, let the reward lead later), and
the warm-up + cosine learning rate of supervised fine-tuning (:mod:`kdrl_mini.sft`)."""

import math
from typing import Callable

SCHEDULES = ("constant", "linear", "cosine", "step")

# The annealing the KDRL paper is reported to use: beta from 5e-3 down to 1e-3. Only secondary
# summaries state these values and the decay shape; see docs/paper.md before quoting them.
PAPER_BETA_START = 5e-3
PAPER_BETA_END = 1e-3


def make_schedule(
    name: str,
    start: float,
    end: float | None = None,
    total_steps: int | None = None,
    warmup_steps: int = 0,
) -> Callable[[int], float]:
    r"""Build beta(step) for step = 0, 1, 2, ...

    With s = step - warmup_steps and progress u = clip(s / total_steps, 0, 1):

        "constant": \beta = start
        "linear":   \beta = start + (end - start) u
        "cosine":   \beta = end + (start - end) (1 + \cos(\pi u)) / 2
        "step":     \beta = start while s < total_steps, then end   (a stronger teacher pull, then a weaker one)

    For every schedule beta = start during the first ``warmup_steps`` steps and beta = end from
    step warmup_steps + total_steps on (held there). Annealing from 5e-3 to 1e-3, the values
    reported for the paper, is ``make_schedule("linear", 5e-3, 1e-3, total_steps)``.

    Args:
        name: one of "constant", "linear", "cosine", "step".
        start: beta at step 0 (>= 0).
        end: final beta (>= 0); required except for "constant".
        total_steps: length of the annealing (> 0); required except for "constant".
        warmup_steps: steps held at ``start`` before annealing begins (>= 0).

    Returns:
        A function int -> float; negative steps raise ValueError.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}: beta is a KL weight")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if name != "constant":
        if end is None or total_steps is None:
            raise ValueError(f"schedule {name!r} anneals from start to end: pass end= and total_steps=")
        if end < 0:
            raise ValueError(f"end must be >= 0, got {end}: beta is a KL weight")
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")

    def beta(step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if name == "constant":
            return float(start)
        u = min(max((step - warmup_steps) / total_steps, 0.0), 1.0)
        if u >= 1.0:  # held at end exactly (start + (end - start) * 1 can miss it by an ulp)
            return float(end)
        if name == "linear":
            return float(start + (end - start) * u)
        if name == "cosine":
            return float(end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * u)))
        return float(start)  # "step" before the switch

    return beta


def annealed(name: str, start: float, end: float | None, anneal_steps: int) -> Callable[[int], float]:
    """beta(step) that reaches ``end`` at the last of ``anneal_steps`` steps (step anneal_steps - 1)
    and holds it: the paper's "linear from 5e-3 to a floor of 1e-3, then held" is
    ``annealed("linear", 5e-3, 1e-3, anneal_steps)``."""
    return make_schedule(name, start, end, max(anneal_steps - 1, 1))


def warmup_cosine(peak: float, steps: int, warmup: int = 0, min_ratio: float = 0.0) -> Callable[[int], float]:
    r"""Learning rate lr(step) for ``steps`` steps: a linear ramp, then a cosine decay to a floor.

        step < warmup:  lr = peak (step + 1) / (warmup + 1)
        afterwards:     the "cosine" schedule from peak to peak * min_ratio over steps - warmup - 1
                        steps, so the last step (steps - 1) runs at the floor exactly
    """
    decay = make_schedule("cosine", peak, peak * min_ratio, max(steps - warmup - 1, 1), warmup)
    return lambda step: peak * (step + 1) / (warmup + 1) if step < warmup else decay(step)
