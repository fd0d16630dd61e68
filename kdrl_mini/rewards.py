"""Rule-based rewards for GSM8K-style answers ("... #### 42"): correctness and format.

Two answer checkers: "strict" (the "#### <answer>" line, below; the tiny world's reward) and
"math" (math-verify: ``\\boxed{}``, LaTeX, units; :mod:`kdrl_mini.answer_check`).
Completions come from a model being trained, so anything may arrive (None, bytes, megabytes of
junk): every function here returns 0 for it instead of raising.
"""

import math

import torch

from .answer_check import completion_text, math_reward  # one text coercion for both checkers

ANSWER_MARKER = "####"
CHECKERS = ("strict", "math")  # answer checkers a config may name (TrainConfig.answer_checker)


def _marker_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.lstrip().startswith(ANSWER_MARKER)]


def extract_answer(text) -> str | None:
    """The answer on the last line that starts with "####", stripped, commas removed.

    "Step 1 ...\\n#### 1,234" -> "1234". Returns None when there is no such line, the line
    holds no answer, or ``text`` is not text.
    """
    text = completion_text(text)
    if not text:
        return None
    lines = _marker_lines(text)
    if not lines:
        return None
    answer = lines[-1][len(ANSWER_MARKER):].strip().replace(",", "")
    return answer or None


def _gold(answer) -> str | None:
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return str(answer)
    answer = completion_text(answer)
    if answer is None:
        return None
    # GSM8K gold fields hold the whole worked solution ending in "#### <n>".
    if ANSWER_MARKER in answer:
        return extract_answer(answer)
    return answer.strip().replace(",", "") or None


def _number(s: str) -> float | None:
    try:
        x = float(s)
    except (ValueError, OverflowError):
        return None
    return x if math.isfinite(x) else None


def correctness_reward(text, answer) -> float:
    """1.0 if the extracted answer equals the gold answer, else 0.0.

    Numbers compare by value ("42" == "42.0" == "4.2e1"), anything else as case-insensitive
    strings. ``answer`` may be a number, a bare answer or a full GSM8K solution.
    """
    pred, gold = extract_answer(text), _gold(answer)
    if pred is None or gold is None:
        return 0.0
    p, g = _number(pred), _number(gold)
    if p is not None and g is not None:
        return float(math.isclose(p, g, rel_tol=1e-9, abs_tol=1e-9))
    return float(pred.lower() == gold.lower())


def format_reward(text) -> float:
    """1.0 when the completion ends with exactly one well-formed "#### <answer>" line.

    Well-formed: the last non-empty line starts with "####", followed by a non-empty answer
    without further "#", and no other line starts with "####".
    """
    text = completion_text(text)
    if not text or not text.strip():
        return 0.0
    lines = _marker_lines(text)
    last = text.strip().splitlines()[-1].strip()
    if len(lines) != 1 or lines[0] != last:
        return 0.0
    answer = last[len(ANSWER_MARKER):].strip()
    return float(bool(answer) and "#" not in answer)


def _check_checker(checker: str) -> None:
    if checker not in CHECKERS:
        raise ValueError(f"answer checker {checker!r} is unknown; choose one of {list(CHECKERS)}")


def correctness(text, answer, checker: str = "strict") -> float:
    """1.0 if ``text``'s final answer equals ``answer`` by the chosen checker, else 0.0:
    "strict" = :func:`correctness_reward`, "math" = :func:`kdrl_mini.answer_check.math_reward`."""
    _check_checker(checker)
    return math_reward(text, answer) if checker == "math" else correctness_reward(text, answer)


def boxed_format_reward(text) -> float:
    r"""1.0 when the completion holds exactly one ``\boxed{...}`` and it is on the last non-empty line
    (the format an instruct model is asked for with ``answer_checker: math``)."""
    text = completion_text(text)
    if not text or not text.strip():
        return 0.0
    return float(text.count("\\boxed{") == 1 and "\\boxed{" in text.strip().splitlines()[-1])


def reward(text, answer, format_weight: float = 0.0, checker: str = "strict") -> float:
    r"""r = correctness + format_weight * format, each in {0, 1}; the format term asks for the final
    answer in the checker's format: a "####" line (strict) or one final ``\boxed{}`` (math)."""
    fmt = boxed_format_reward if checker == "math" else format_reward
    return correctness(text, answer, checker) + format_weight * fmt(text)


def batch_rewards(texts, answers, format_weight: float = 0.0, device=None, checker: str = "strict") -> torch.Tensor:
    """Rewards of B completions against their B gold answers -> FloatTensor [B] on ``device``
    (the policy's device: rewards meet the model's tensors in the loss)."""
    _check_checker(checker)
    texts, answers = list(texts), list(answers)
    if len(texts) != len(answers):
        raise ValueError(f"{len(texts)} completions but {len(answers)} answers: pass one answer per completion")
    return torch.tensor([reward(t, a, format_weight, checker) for t, a in zip(texts, answers)], dtype=torch.float32,
                        device=device)


def overlong_penalty(lengths: torch.Tensor, truncated: torch.Tensor, max_len: int, cache: int) -> torch.Tensor:
    r"""DAPO's soft overlong punishment, added to the reward: [B] from lengths and truncated [B].

        0                                   |o| <= L - c
        (L - c - |o|) / c  \in [-1, 0)      L - c < |o| <= L       (a ramp over the last c tokens)
        -1                                  truncated (the budget ran out before an EOS)

    with L = ``max_len`` (the generation budget) and c = ``cache``. A length pressure that grows
    smoothly near the budget instead of a cliff at it."""
    if not 0 < cache <= max_len:
        raise ValueError(f"overlong cache must be in 1..max_len ({max_len}), got {cache}")
    ramp = ((max_len - cache) - lengths.to(torch.get_default_dtype())) / cache
    penalty = ramp.clamp(-1.0, 0.0)
    return torch.where(truncated.bool(), torch.full_like(penalty, -1.0), penalty)
