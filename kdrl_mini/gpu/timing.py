"""How long one training step and one evaluation should take on a GPU: a rough model (FLOPs over an
assumed share of the card's peak; decoding bounded by reading the weights once per token)."""

from __future__ import annotations

import math

from ..algorithms import ALGORITHMS as RECORDS
from .shapes import ModelShape

# Fractions of the card's peak dense tensor FLOPs that each kind of matmul reaches (assumptions).
EFFICIENCY = {"none": 0.35, "4bit": 0.20, "8bit": 0.10}
# Bytes read per weight per decoded token (4-bit: dequantise to 16-bit, then a 16-bit matmul).
DECODE_BYTES = {"none": 2.0, "4bit": 4.5, "8bit": 4.0}
LAUNCH_S_PER_LAYER = 1e-3            # eager PyTorch + peft + bitsandbytes: launches and Python per layer per token
VLLM_LAUNCH_S_PER_LAYER = 2e-5       # vLLM replays a CUDA graph per token: launch cost all but gone (assumption)


def _decode_seconds(shape: ModelShape, quant: str, rows: int, context: int, steps: int, bandwidth_gbs: float,
                    launch: float = LAUNCH_S_PER_LAYER) -> float:
    """Decoding ``steps`` tokens for ``rows`` sequences: weights and KV cache read once per token."""
    weights = shape.layers * shape.linear_params_per_layer * DECODE_BYTES[quant] + shape.vocab * shape.hidden * 2
    kv = rows * context * shape.kv_bytes_per_token()
    return steps * ((weights + kv) / (bandwidth_gbs * 1e9) + shape.layers * launch)


def teacher_samples(cfg, algorithm: str | None = None) -> bool:
    """Whether ``algorithm`` (default: the run's first stage) samples its rollouts from the teacher (KD-FKL)."""
    return RECORDS[algorithm or cfg.algorithm_at(0)].teacher_samples


def phase_seconds(cfg, s: ModelShape, t: ModelShape, prompt_tokens: int, tflops: float, bandwidth_gbs: float,
                  vllm: bool = False, algorithm: str | None = None) -> dict[str, float]:
    """Seconds of each phase of one step of ``algorithm`` (default: the run's first stage): rollout
    (``generate``), teacher scoring (``teacher``), the student's update (``train``). Rough. With ``vllm`` the
    rollout decodes the merged student in 16 bits (vLLM's copy) from a CUDA graph; an algorithm whose teacher
    samples (KD-FKL) decodes the teacher, and the teacher scores only for those whose loss uses it."""
    algorithm = algorithm or cfg.algorithm_at(0)
    P, T = prompt_tokens, cfg.max_new_tokens
    prompts, G = cfg.sampling_at(0) if teacher_samples(cfg, algorithm) else (cfg.prompts_per_step, cfg.group_size)
    B = prompts * G
    peak = tflops * 1e12
    if teacher_samples(cfg, algorithm):
        generate = _decode_seconds(t, cfg.teacher_quant, B, P + T // 2, T, bandwidth_gbs)
    elif vllm:
        generate = _decode_seconds(s, "none", B, P + T // 2, T, bandwidth_gbs, VLLM_LAUNCH_S_PER_LAYER)
    else:
        generate = _decode_seconds(s, cfg.student_quant, B, P + T // 2, T, bandwidth_gbs)
    teacher_tokens = prompts * P + B * T  # score_groups encodes each prompt once
    scored = RECORDS[algorithm].teacher_scores or bool(cfg.log_exact_kl)
    teacher = 2 * t.parameters * teacher_tokens / (peak * EFFICIENCY[cfg.teacher_quant]) if scored else 0.0
    per_token = 2 + 4 + (2 if cfg.gradient_checkpointing else 0)
    train = cfg.ppo_epochs * per_token * s.parameters * B * (P + T) / (peak * EFFICIENCY[cfg.student_quant])
    return {"generate": generate, "teacher": teacher, "train": train}


def step_seconds(cfg, s: ModelShape, t: ModelShape, prompt_tokens: int, tflops: float, bandwidth_gbs: float,
                 vllm: bool = False) -> float:
    """One training step, averaged over the run's stages (kd-then-grpo: KD steps, then GRPO steps). Rough."""
    stages = ([(cfg.sequential_kd, cfg.switch()), ("grpo", cfg.max_steps - cfg.switch())]
              if cfg.algorithm == "kd-then-grpo" else [(cfg.algorithm, 1)])
    total = sum(n for _, n in stages) or 1
    return sum(n / total * sum(phase_seconds(cfg, s, t, prompt_tokens, tflops, bandwidth_gbs, vllm, a).values())
               for a, n in stages)


def eval_seconds(cfg, s: ModelShape, prompt_tokens: int, bandwidth_gbs: float) -> float:
    """One greedy evaluation of ``eval_size`` rows (decoding to the budget; rough)."""
    rows, batch = cfg.eval_size, min(cfg.eval_size, cfg.eval_batch_size)
    steps = cfg.max_new_tokens + cfg.eval_extra_tokens
    return math.ceil(rows / batch) * _decode_seconds(s, cfg.student_quant, batch, prompt_tokens + steps // 2, steps,
                                                     bandwidth_gbs)


def run_seconds(cfg, est) -> float:
    """One run of ``est`` (a :class:`~kdrl_mini.gpu.memory.MemoryEstimate`): max_steps steps plus its
    evaluations (every ``eval_every`` steps and at the end)."""
    evals = (cfg.max_steps // cfg.eval_every if cfg.eval_every else 0) + (
        0 if cfg.eval_every and cfg.max_steps % cfg.eval_every == 0 else 1)
    return cfg.max_steps * est.step_seconds + evals * est.detail.get("eval_seconds", float("nan"))
