"""``KDRLConfig``: TRL's GRPOConfig plus the kit's KD knobs, with clear refusals; mixing teachers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from ._common import GRPOConfig
from ...kl import TOKEN_KL_KINDS
from ...losses import KD_STRATEGIES

KD_BETA_SCHEDULES = ("constant", "linear", "cosine")
KD_KL_MODES = ("loss", "reward")
# TRL loss types whose normaliser the KD term reproduces (kl_mode="loss").
KD_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
# kdrl_mini loss_agg that each TRL loss_type equals on one process without accumulation (parity tests).
LOSS_TYPE_TO_AGG = {"grpo": "seq-mean", "bnpo": "token-mean", "dapo": "token-mean", "dr_grpo": "seq-sum-norm"}


def _refuse(name: str, value, why: str):
    raise ValueError(f"KDRLConfig.{name}={value!r}: {why}")


@dataclass
class KDRLConfig(GRPOConfig):
    """TRL's ``GRPOConfig`` plus the knobs of KDRL (arXiv 2506.02208).

    TRL's ``beta`` remains the KL to a frozen *reference* model; ``kd_beta`` is the KL to the *teacher*.
    The paper uses the teacher in place of the reference (``beta=0``, TRL's default).
    """

    teacher_model_name_or_path: str | list[str] | None = field(
        default=None,
        metadata={"help": "Path or Hub id of the teacher (same tokenizer / vocabulary as the student), or a list of "
                          "them for a weighted mixture (see teacher_weights). May be omitted when a loaded "
                          "`teacher_model` is passed to KDRLTrainer."})
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Mixture weights of several teachers (positive, normalised to sum 1), mixed per token as "
                          "log p_mix = logsumexp_i(log w_i + log p_i). None: equal weights."})
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `AutoModelForCausalLM.from_pretrained` of the teacher (a dict or "
                          "a JSON string), as TRL's DistillationConfig names them."})
    teacher_load_in_8bit: bool = field(
        default=True,
        metadata={"help": "Load the teacher in 8-bit through `BitsAndBytesConfig(load_in_8bit=True)` when CUDA is "
                          "available and `teacher_model_init_kwargs` sets no `quantization_config`. On CPU the "
                          "teacher is always fp32."})
    teacher_load_in_4bit: bool = field(
        default=False,
        metadata={"help": "Load the teacher in 4-bit NF4 (``BitsAndBytesConfig(load_in_4bit=True, nf4)``, computing in "
                          "the teacher's `dtype`) when CUDA is available and `teacher_model_init_kwargs` sets no "
                          "`quantization_config`; set teacher_load_in_8bit=False with it. On CPU the teacher is fp32."})
    teacher_batch_size: int | None = field(
        default=None,
        metadata={"help": "Completions per teacher forward (None: one group, num_generations). Below a group the "
                          "group's prompt is encoded once per piece. The head runs a chunk of tokens at a time, so "
                          "no [rows, T, V] logits exist."})
    pg_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of TRL's policy-gradient loss. 1: KDRL (GRPO + kd_beta * KL); 0 with kd_beta=1: "
                          "KD-RKL, on-policy distillation alone (the rewards are still computed and logged)."})
    adapter_fp32: bool = field(
        default=True,
        metadata={"help": "Keep the trainable LoRA weights of a quantised student in fp32, as the kit does, instead "
                          "of TRL's bf16 cast: in bf16 an Adam step of lr 2e-5 is below half a unit in the last "
                          "place of a LoRA A entry (~0.02), so A would never change."})
    log_teacher_kl: bool = field(
        default=True,
        metadata={"help": "When kd_beta is 0 throughout (GRPO), still score the teacher each step to log kd/kl (a "
                          "teacher forward for a metric). False skips the teacher then, as the kit's GRPO does."})
    kd_beta: float = field(
        default=0.05,
        metadata={"help": "Coefficient of KL(student || teacher) (the start value when annealed). The kit's "
                          "default on its tiny world; the paper reports 2e-3 constant, or 5e-3 -> 1e-3 annealed."})
    kd_beta_schedule: str = field(
        default="constant",
        metadata={"help": "How kd_beta changes with the optimiser step: 'constant', 'linear' or 'cosine' from "
                          "kd_beta to kd_beta_end over kd_anneal_steps, then held."})
    kd_beta_end: float | None = field(
        default=None, metadata={"help": "Final kd_beta of a linear / cosine schedule."})
    kd_anneal_steps: int | None = field(
        default=None,
        metadata={"help": "Optimiser steps to reach kd_beta_end (None: max_steps)."})
    kl_kind: str = field(
        default="k2",
        metadata={"help": "Per-token KL estimate: 'k1', 'k2' (the paper's choice in the loss: its gradient is the "
                          "reverse KL's), 'k3', 'exact' (full vocabulary sum) or 'topk' (student's top kl_top_k "
                          "tokens). 'exact'/'topk' keep the teacher's final hidden states [B, T, H] and rebuild both models' logits a "
                          "chunk of tokens at a time (one teacher; a mixture needs k1/k2/k3)."})
    kl_top_k: int | None = field(default=None, metadata={"help": "k for kl_kind='topk'."})
    kl_mode: str = field(
        default="loss",
        metadata={"help": "'loss': add kd_beta * KL to the loss; 'reward': the per-token form, advantages "
                          "A_i + kd_beta * (log pi_T - log pi_old) per token (needs kl_kind='k1')."})
    kd_strategy: str = field(
        default="all",
        metadata={"help": "Which responses are distilled: 'all', 'incorrect' (reward < kd_threshold; the paper's "
                          "KDRL-Mask) or 'failed-groups' (only groups where every reward < kd_threshold)."})
    kd_threshold: float = field(
        default=1.0, metadata={"help": "Reward (weighted sum over reward functions) at or above which a response "
                                       "counts as correct for kd_strategy."})

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.teacher_model_init_kwargs, str):
            self.teacher_model_init_kwargs = json.loads(self.teacher_model_init_kwargs)
        self.validate_kd()

    @property
    def teacher_unused(self) -> bool:
        """True when the teacher would only feed a metric that is switched off (GRPO without kd/kl)."""
        return self.kd_beta == 0 and not self.kd_beta_end and not self.log_teacher_kl  # pg_weight 0 needs kd_beta > 0

    def validate_kd(self) -> None:
        """Refuse unsupported combinations with a ValueError naming the field."""
        if self.pg_weight < 0:
            _refuse("pg_weight", self.pg_weight, "must be >= 0 (0: distillation alone, KD-RKL)")
        if self.pg_weight == 0 and (self.kl_mode != "loss" or self.kd_beta <= 0):
            _refuse("pg_weight", 0.0, "distillation alone (KD-RKL) needs kl_mode='loss' and kd_beta > 0: with the "
                    "policy-gradient loss off, nothing else would be trained")
        if self.kd_beta < 0:
            _refuse("kd_beta", self.kd_beta, "must be >= 0 (a negative KL weight pushes away from the teacher)")
        if self.kd_beta_schedule not in KD_BETA_SCHEDULES:
            _refuse("kd_beta_schedule", self.kd_beta_schedule, f"choose one of {list(KD_BETA_SCHEDULES)} "
                    "(the kit's 'step' schedule is not offered here)")
        if self.kd_beta_schedule != "constant":
            if self.kd_beta_end is None:
                _refuse("kd_beta_end", None, f"needed for kd_beta_schedule={self.kd_beta_schedule!r}")
            if self.kd_anneal_steps is None and (self.max_steps is None or self.max_steps <= 0):
                _refuse("kd_anneal_steps", None, "set it (or max_steps > 0) for an annealed kd_beta")
        if self.kd_beta_end is not None and self.kd_beta_end < 0:
            _refuse("kd_beta_end", self.kd_beta_end, "must be >= 0")
        if self.kd_anneal_steps is not None and self.kd_anneal_steps < 1:
            _refuse("kd_anneal_steps", self.kd_anneal_steps, "must be >= 1 (or None)")
        if self.kl_kind not in TOKEN_KL_KINDS:
            _refuse("kl_kind", self.kl_kind, f"choose one of {list(TOKEN_KL_KINDS)}")
        if self.kl_kind == "topk" and not (self.kl_top_k and self.kl_top_k >= 1):
            _refuse("kl_top_k", self.kl_top_k, "a positive integer is needed when kl_kind='topk'")
        if self.kl_mode == "reward-seq":
            _refuse("kl_mode", self.kl_mode, "the sequence-sum reward variant is only in the kit's own trainer "
                    "(kdrl-mini train); use 'reward' (per token) or 'loss'")
        if self.kl_mode not in KD_KL_MODES:
            _refuse("kl_mode", self.kl_mode, f"choose one of {list(KD_KL_MODES)}")
        if self.kl_mode == "reward" and self.kl_kind != "k1":
            _refuse("kl_kind", self.kl_kind, "kl_mode='reward' adds the sampled log-ratio (k1) to the advantages; "
                    "set kl_kind='k1'")
        if self.kd_strategy not in KD_STRATEGIES:
            _refuse("kd_strategy", self.kd_strategy, f"choose one of {list(KD_STRATEGIES)}")
        if self.kl_mode == "loss" and self.loss_type not in KD_LOSS_TYPES:
            _refuse("loss_type", self.loss_type, f"kl_mode='loss' mirrors TRL's normaliser for {list(KD_LOSS_TYPES)} "
                    "only; pick one of those or use kl_mode='reward'")
        if self.teacher_weights is not None:
            n = len(self.teacher_model_name_or_path) if isinstance(self.teacher_model_name_or_path, list) else None
            if any(not w > 0 for w in self.teacher_weights):
                _refuse("teacher_weights", self.teacher_weights, "every weight must be > 0 (drop a teacher instead)")
            if n is not None and n != len(self.teacher_weights):
                _refuse("teacher_weights", self.teacher_weights, f"one weight per teacher ({n} teachers)")
        if self.teacher_load_in_4bit and self.teacher_load_in_8bit:
            _refuse("teacher_load_in_4bit", True, "and teacher_load_in_8bit are both set; keep one (the kit maps "
                    "teacher_quant=4bit to teacher_load_in_4bit=True, teacher_load_in_8bit=False)")
        if self.teacher_batch_size is not None and self.teacher_batch_size < 1:
            _refuse("teacher_batch_size", self.teacher_batch_size, "must be >= 1 (or None)")


def mix_teacher_logps(logps: list[torch.Tensor], weights: list[float] | None = None) -> torch.Tensor:
    r"""Several teachers as one: \log p_{mix} = \operatorname{logsumexp}_i(\log w_i + \log p_i), w normalised to sum 1.

    ``logps``: per-teacher log-probs of the same shape, [B, T] (sampled tokens) or [B, T, V] (full
    distributions, for exact / top-k KL). One teacher is returned unchanged."""
    if len(logps) == 1:
        return logps[0]
    w = torch.tensor([1.0] * len(logps) if weights is None else list(weights), dtype=torch.float64)
    if len(w) != len(logps) or not bool((w > 0).all()):
        raise ValueError(f"teacher_weights={list(w.tolist())}: one positive weight per teacher ({len(logps)})")
    logw = (w / w.sum()).log().to(logps[0].dtype).to(logps[0].device)
    shape = (-1,) + (1,) * logps[0].dim()
    return torch.logsumexp(torch.stack(logps) + logw.view(shape), dim=0)
