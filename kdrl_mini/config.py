"""Training configuration: one dataclass, loadable from YAML, validated with helpful errors.

An algorithm is a choice of fields, not a separate loop:
- ``grpo``:   clipped policy gradient on rule rewards (no teacher in the loss);
- ``kd-fkl``: forward KL on teacher samples = SFT on teacher-generated solutions;
- ``kd-rkl``: reverse KL on the student's own samples (on-policy distillation, no reward);
- ``kdrl``:   GRPO + beta * KL(student || teacher), KL in the loss or in the reward.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from .losses import KD_STRATEGIES, KL_MODES, LOSS_AGGS
from .schedules import SCHEDULES

ALGORITHMS = ("grpo", "kd-fkl", "kd-rkl", "kdrl")
KL_KINDS = ("k1", "k2", "k3", "exact", "topk")
ADV_SCALES = ("std", "none")
QUANTS = ("none", "4bit", "8bit")
CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class TrainConfig:
    """Every knob of a run. Paths are relative to the current folder."""

    algorithm: str = "kdrl"                 # one of ALGORITHMS
    # world
    student_path: str = "data/models/student"
    teacher_path: str = "data/models/teacher"
    data_dir: str = "data"                  # holds train.jsonl, test.jsonl, ood.jsonl
    student_quant: str = "4bit"             # "4bit" NF4 (+LoRA), "8bit" or "none" (fp32/bf16)
    teacher_quant: str = "8bit"
    lora_r: int = 16                        # 0 = train all weights (student_quant must be "none")
    lora_alpha: int = 32
    # rollout
    group_size: int = 8                     # G responses per prompt
    prompts_per_step: int = 8
    max_new_tokens: int = 48
    temperature: float = 1.0
    format_weight: float = 0.0              # reward = correct + format_weight * well-formed final line
    chat_template: bool = False             # wrap prompts in the tokenizer's chat template (instruct models)
    # optimisation
    lr: float = 3e-4
    max_steps: int = 100
    ppo_epochs: int = 1                     # inner passes over each rollout
    clip_eps: float = 0.2
    clip_eps_high: float | None = None      # asymmetric upper clip (DAPO's clip-higher)
    loss_agg: str = "token-mean"            # the paper's 1/sum|o_i| normaliser
    adv_scale: str = "std"                  # "none" = Dr. GRPO (centre only)
    max_grad_norm: float = 1.0
    # KD / KDRL
    beta: float = 0.05                      # KL coefficient (start value when annealed)
    beta_end: float | None = None
    beta_schedule: str = "constant"         # one of SCHEDULES
    kl_kind: str = "k2"                     # KL approximation, one of KL_KINDS
    kl_mode: str = "loss"                   # "loss" or "reward"
    top_k: int | None = None                # for kl_kind="topk"
    kd_strategy: str = "all"                # reward-guided KD, one of KD_STRATEGIES
    kd_threshold: float = 1.0               # reward at/above which a response counts as correct
    # bookkeeping
    seed: int = 0
    eval_every: int = 25                    # 0 = only at the end
    eval_size: int = 100                    # prompts of test and ood evaluated (greedy)
    checkpoint_every: int = 25
    log_teacher_kl: bool = True             # score GRPO rollouts with the teacher for KL metrics
    output_dir: str = "runs/default"
    device: str | None = None               # None = CUDA if available else CPU
    threads: int | None = None              # torch CPU threads (None = torch's default)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def choice(name, allowed):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"config field {name}={value!r} is not allowed; choose one of {list(allowed)}")

        choice("algorithm", ALGORITHMS)
        choice("kl_kind", KL_KINDS)
        choice("kl_mode", KL_MODES)
        choice("kd_strategy", KD_STRATEGIES)
        choice("beta_schedule", SCHEDULES)
        choice("loss_agg", LOSS_AGGS)
        choice("adv_scale", ADV_SCALES)
        choice("student_quant", QUANTS)
        choice("teacher_quant", QUANTS)
        if self.group_size < 2:
            raise ValueError(f"config field group_size={self.group_size}: GRPO needs at least 2 responses per prompt")
        for name in ("beta", "lr", "clip_eps", "temperature"):
            if getattr(self, name) < 0:
                raise ValueError(f"config field {name}={getattr(self, name)} must be >= 0")
        if self.beta_end is not None and self.beta_end < 0:
            raise ValueError(f"config field beta_end={self.beta_end} must be >= 0")
        if self.beta_schedule != "constant" and self.beta_end is None:
            raise ValueError(f"config field beta_end is needed for beta_schedule={self.beta_schedule!r}")
        if self.kl_kind == "topk" and not self.top_k:
            raise ValueError("config field top_k must be a positive integer when kl_kind='topk'")
        for name in ("prompts_per_step", "max_new_tokens", "max_steps", "ppo_epochs", "eval_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name}={getattr(self, name)} must be >= 1")
        if self.lora_r == 0 and self.student_quant != "none":
            raise ValueError("config field lora_r=0 (full fine-tuning) needs student_quant='none': "
                             "quantised weights are frozen")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (a shipped name like ``kdrl`` also works)."""
    path = Path(path)
    if not path.exists() and (CONFIG_DIR / f"{path.stem}.yaml").exists():
        path = CONFIG_DIR / f"{path.stem}.yaml"
    if not path.exists():
        shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"config file {path} not found; pass a YAML path or a shipped config name: {shipped}")
    values = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config field(s) {unknown}; known fields: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)
