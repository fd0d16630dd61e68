"""The kit's rewards and prompts in TRL's shapes: reward functions over completions, and the tiny
world's training rows as a ``datasets.Dataset``."""

from __future__ import annotations

import json

from ...rewards import boxed_format_reward, correctness, correctness_reward, format_reward


def correctness_reward_func(completions, answer, **kwargs) -> list[float]:
    """TRL reward function: 1 when the completion's final ``#### n`` line equals the row's answer."""
    return [correctness_reward(c, a) for c, a in zip(completions, answer)]


def math_correctness_reward_func(completions, answer, **kwargs) -> list[float]:
    """TRL reward function: 1 when math-verify finds the row's answer (``\\boxed{}``, ``####``, LaTeX, units);
    the kit's ``answer_checker: math``."""
    return [correctness(c, a, checker="math") for c, a in zip(completions, answer)]


def boxed_format_reward_func(completions, **kwargs) -> list[float]:
    """TRL reward function: 1 for exactly one final ``\\boxed{}`` answer (the math checker's format)."""
    return [boxed_format_reward(c) for c in completions]


def format_reward_func(completions, **kwargs) -> list[float]:
    """TRL reward function: 1 for a well-formed final line (weight it with GRPOConfig.reward_weights)."""
    return [format_reward(c) for c in completions]


def load_prompt_dataset(path: str = "data/train.jsonl"):
    """The tiny world's training rows as a ``datasets.Dataset`` with ``prompt`` and ``answer`` columns."""
    from datasets import Dataset

    rows = [json.loads(line) for line in open(path) if line.strip()]
    return Dataset.from_list([{"prompt": r["prompt"], "answer": str(r["answer"])} for r in rows])
