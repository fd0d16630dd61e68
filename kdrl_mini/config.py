"""Training configuration: one dataclass whose defaults are the shipped defaults.

An algorithm is a choice of fields, not a separate loop:
- ``grpo``:   clipped policy gradient on rule rewards (no teacher in the loss);
- ``kd-fkl``: forward KL on teacher samples = SFT on teacher-generated solutions;
- ``kd-rkl``: reverse KL on the student's own samples (on-policy distillation, no reward);
- ``kdrl``:   GRPO + beta * KL(student || teacher), KL in the loss or in the reward;
- ``kd-then-grpo``: the usual two-stage pipeline at the same budget: ``sequential_kd`` (KD-FKL,
  i.e. SFT on teacher samples, by default) until ``switch_step``, then GRPO with a fresh optimiser.

Shipped YAML files (``kdrl_mini/configs``) hold only what differs from these defaults; any field
can also be set from the command line with ``--set key=value``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .advantages import ADV_SCALES
from .algorithms import ALGORITHMS as STAGES
from .config_types import check_fields, check_types
from .kl import TOKEN_KL_KINDS
from .losses import KD_STRATEGIES, LOSS_AGGS
from .rewards import CHECKERS
from .schedules import SCHEDULES, warmup_cosine
from .tasks.files import KNOWN_SPLITS

ALGORITHMS = (*STAGES, "kd-then-grpo")  # one record each (kdrl_mini.algorithms); kd-then-grpo chains two
TRL_ALGORITHMS = tuple(name for name, a in STAGES.items() if a.on_trl)  # what --engine trl runs
VLLM_MEMORY_SHARE = 0.3  # --engine trl on a GPU: the card's share vLLM (colocated) takes while it generates
KL_KINDS = TOKEN_KL_KINDS
# "loss": a differentiable KL term (the paper's form, with k2); "reward": per-token log-ratio added to the
# advantages after group normalisation (how third-party ports write it); "reward-seq": the sequence sum
# subtracted from the reward before normalisation (a variant: its beta cancels inside all-wrong groups).
KL_MODES = ("loss", "reward", "reward-seq")
QUANTS = ("none", "4bit", "8bit")
COMPUTE_DTYPES = ("auto", "bf16", "fp16", "fp32")
LR_SCHEDULES = ("constant", "cosine")
CONFIG_DIR = Path(__file__).parent / "configs"
EVAL_EXTRA_TOKENS = 16  # greedy evaluation decodes max_new_tokens + 16 (Trainer.evaluate)


@dataclass
class TrainConfig:
    """Every knob of a run. Paths are relative to the current folder."""

    algorithm: str = "kdrl"                 # one of ALGORITHMS
    # world
    student_path: str = "data/models/student"
    teacher_path: str = "data/models/teacher"
    data_dir: str = "data"                  # train.jsonl + eval splits (test, blind, ood, ...)
    # data from `datasets` instead (None = the JSONL splits in data_dir, i.e. the tiny world)
    dataset: str | None = None              # hub id ("openai/gsm8k"), a local file or folder, or "dir/{split}.parquet"
    dataset_config: str | None = None       # hub config name (gsm8k: "main")
    train_split: str = "train"
    test_split: str = "test"
    ood_split: str | None = None            # optional out-of-distribution eval split
    prompt_column: str = "prompt"           # column map: GSM8K's prompt column is "question"
    answer_column: str = "answer"
    answer_checker: str = "strict"          # "strict": the "#### n" line (tiny world); "math": math-verify
    prompt_suffix: str = ""                 # appended to every prompt (an instruction for instruct models)
    student_quant: str = "4bit"             # "4bit" NF4 (+LoRA), "8bit" or "none" (fp32 CPU / bf16 CUDA)
    teacher_quant: str = "8bit"
    lora_r: int = 16                        # 0 = train all weights (student_quant must be "none")
    lora_alpha: int = 32
    gradient_checkpointing: bool = False    # trade compute for activation memory (long responses)
    # rollout
    group_size: int = 8                     # G responses per prompt
    prompts_per_step: int = 8
    kd_fkl_group_size: int | None = None    # KD-FKL's teacher samples per prompt (no group statistic: fewer
    kd_fkl_prompts_per_step: int | None = None  # samples of more prompts); None = group_size / prompts_per_step
    max_new_tokens: int = 48
    temperature: float = 1.0                # sampling temperature; the policy is scored at the same one
    format_weight: float = 0.0              # reward = correct + format_weight * well-formed final line
    chat_template: bool = False             # wrap prompts in the tokenizer's chat template (instruct models)
    rollout_copy: bool | None = None        # sample from a plain fp32 copy, LoRA merged (dequantised if 4-bit); None = on CPU
    # optimisation
    lr: float = 3e-4
    lr_schedule: str = "constant"           # "cosine": down to lr * lr_floor at the last step (schedules.warmup_cosine)
    lr_warmup_steps: int = 0                # linear warm-up steps (each stage of kd-then-grpo starts its own)
    lr_floor: float = 0.0                   # cosine's final learning rate as a share of lr
    grpo_stage_lr: float | None = None      # kd-then-grpo: the GRPO stage's peak lr (None = lr)
    max_steps: int = 40
    ppo_epochs: int = 1                     # inner passes over each rollout
    micro_batch_size: int | None = None     # sequences per forward/backward; None = the whole rollout
    clip_eps: float = 0.2
    clip_eps_high: float | None = None      # asymmetric upper clip (DAPO's clip-higher)
    loss_agg: str = "token-mean"            # the paper's 1/sum|o_i| normaliser
    adv_scale: str = "std"                  # "none" = Dr. GRPO (centre only)
    max_grad_norm: float = 1.0
    # GRPO's 2025 practice (notebook 01); the defaults switch each off
    ref_beta: float = 0.0                   # GRPO's k3 KL to the reference (the initial student: LoRA disabled)
    dynamic_sampling: bool = False          # GRPO: drop groups whose rewards are all equal from the loss
    overlong_cache: int = 0                 # DAPO's soft overlong ramp over the last N tokens; 0 = off
    mask_truncated_completions: bool = False  # DAPO's overlong filtering: cut-off responses leave the RL loss
    # KD / KDRL
    beta: float = 0.05                      # KL coefficient (start value when annealed)
    beta_end: float | None = None           # floor of an annealing schedule
    beta_schedule: str = "constant"         # one of SCHEDULES
    anneal_steps: int | None = None         # steps to reach beta_end, then held; None = the whole run
    kl_kind: str = "k2"                     # KL approximation, one of KL_KINDS
    kl_mode: str = "loss"                   # one of KL_MODES
    top_k: int | None = None                # for kl_kind="topk"
    kd_strategy: str = "all"                # reward-guided KD, one of KD_STRATEGIES
    kd_threshold: float = 1.0               # reward at/above which a response counts as correct
    sequential_kd: str = "kd-fkl"           # first stage of kd-then-grpo: "kd-fkl" or "kd-rkl"
    switch_step: int | None = None          # kd-then-grpo: steps of KD before GRPO; None = half the run
    # bookkeeping
    seed: int = 0
    eval_every: int = 20                    # 0 = only at the end
    eval_size: int = 100                    # rows of each eval split evaluated (greedy)
    final_eval_size: int | None = None      # rows evaluated after the last step (None = eval_size)
    eval_splits: str | None = None          # comma-separated splits to evaluate (None = test, blind, ood, ood_control)
    eval_extra_tokens: int = EVAL_EXTRA_TOKENS  # greedy evaluation decodes max_new_tokens + this many tokens
    eval_batch_size: int = 100              # prompts per greedy generate call (larger is faster on CPU)
    checkpoint_every: int = 10              # 0 = only at the end
    log_exact_kl: bool | None = None        # exact KL(student || teacher) per step; None = when [B, T, V] is small
    probe_size: int = 0                     # rows of the fixed probe set (the teacher's greedy answers); 0 = off
    probe_split: str = "mix@64"             # its split and budget; probe_kl is logged at every evaluation
    output_dir: str = "runs/default"
    device: str | None = None               # None = CUDA if available else CPU
    compute_dtype: str = "auto"             # CUDA compute dtype: "bf16", "fp16" (T4: no bf16), "fp32" (fp16-safe), "auto" = bf16 if supported
    threads: int | None = 1                 # torch CPU threads (tiny models: 1 is fastest)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        check_types(self)

        def choice(name, allowed):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"config field {name}={value!r} is not allowed; choose one of {list(allowed)}")

        choice("algorithm", ALGORITHMS)
        choice("sequential_kd", ("kd-fkl", "kd-rkl"))
        choice("kl_kind", KL_KINDS)
        choice("kl_mode", KL_MODES)
        choice("kd_strategy", KD_STRATEGIES)
        choice("beta_schedule", SCHEDULES)
        choice("loss_agg", LOSS_AGGS)
        choice("adv_scale", ADV_SCALES)
        choice("student_quant", QUANTS)
        choice("teacher_quant", QUANTS)
        choice("answer_checker", CHECKERS)
        choice("compute_dtype", COMPUTE_DTYPES)
        choice("lr_schedule", LR_SCHEDULES)
        if self.lr_warmup_steps < 0 or not 0 <= self.lr_floor <= 1 or self.eval_extra_tokens < 0:
            raise ValueError(f"config fields lr_warmup_steps={self.lr_warmup_steps} and eval_extra_tokens="
                             f"{self.eval_extra_tokens} must be >= 0, lr_floor={self.lr_floor} in [0, 1]")
        if self.eval_splits is not None:
            unknown = [s for s in self.eval_split_names()
                       if not re.fullmatch(r"[a-z_]+(@[1-9]\d*)?", s) or s.split("@")[0] not in KNOWN_SPLITS[1:]]
            if unknown or not self.eval_split_names():
                raise ValueError(f"config field eval_splits={self.eval_splits!r}: name splits from "
                                 f"{list(KNOWN_SPLITS[1:])}, comma-separated (test@64: test at a 64-token budget)")
        if self.probe_size < 0 or not re.fullmatch(r"[a-z_]+(@[1-9]\d*)?", self.probe_split) \
                or self.probe_split.split("@")[0] not in KNOWN_SPLITS[1:]:
            raise ValueError(f"config fields probe_size={self.probe_size} must be >= 0 and probe_split="
                             f"{self.probe_split!r} a split from {list(KNOWN_SPLITS[1:])} (mix@64: at 64 tokens)")
        if self.group_size < 2:
            raise ValueError(f"config field group_size={self.group_size}: GRPO needs at least 2 responses per prompt")
        for name in ("beta", "lr", "clip_eps", "temperature", "ref_beta"):
            if getattr(self, name) < 0:
                raise ValueError(f"config field {name}={getattr(self, name)} must be >= 0")
        if self.temperature == 0:
            raise ValueError("config field temperature=0: sampling needs a positive temperature")
        if self.beta_end is not None and self.beta_end < 0:
            raise ValueError(f"config field beta_end={self.beta_end} must be >= 0")
        if self.beta_schedule != "constant" and self.beta_end is None:
            raise ValueError(f"config field beta_end is needed for beta_schedule={self.beta_schedule!r}")
        if self.kl_kind == "topk" and not self.top_k:
            raise ValueError("config field top_k must be a positive integer when kl_kind='topk'")
        if self.kl_mode != "loss" and self.kl_kind != "k1":
            raise ValueError(f"config field kl_mode={self.kl_mode!r} uses the sampled log-ratio (k1) as a "
                             f"reward; set kl_kind: k1 (got {self.kl_kind!r})")
        for name in ("prompts_per_step", "max_new_tokens", "max_steps", "ppo_epochs", "eval_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name}={getattr(self, name)} must be >= 1")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"config field {name}={getattr(self, name)} must be >= 0 (0 = only at the end)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"config field threads={self.threads} must be >= 1 (or null for torch's default)")
        for name in ("micro_batch_size", "anneal_steps", "switch_step", "final_eval_size", "kd_fkl_group_size",
                     "kd_fkl_prompts_per_step"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"config field {name}={getattr(self, name)} must be >= 1 (or null)")
        if self.device is not None and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"config field device={self.device!r} is not a device; use cpu, cuda, cuda:N or "
                             f"null (CUDA when present)")
        if not 0 <= self.overlong_cache <= self.max_new_tokens:
            raise ValueError(f"config field overlong_cache={self.overlong_cache} must be in 0..max_new_tokens "
                             f"({self.max_new_tokens})")
        if self.ref_beta > 0 and self.lora_r == 0:
            raise ValueError("config field ref_beta > 0 needs LoRA (lora_r > 0): the reference is the student "
                             "with its adapter disabled")
        if self.lora_r == 0 and self.student_quant != "none":
            raise ValueError("config field lora_r=0 (full fine-tuning) needs student_quant='none': "
                             "quantised weights are frozen")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def algorithm_at(self, step: int) -> str:
        """The loss in use at 0-based ``step`` (differs from ``algorithm`` only for kd-then-grpo)."""
        if self.algorithm != "kd-then-grpo":
            return self.algorithm
        return self.sequential_kd if step < self.switch() else "grpo"

    def sampling_at(self, step: int) -> tuple[int, int]:
        """(prompts per step, responses per prompt) at 0-based ``step``: KD-FKL's own (teacher samples) when set."""
        if STAGES[self.algorithm_at(step)].teacher_samples:
            return (self.kd_fkl_prompts_per_step or self.prompts_per_step, self.kd_fkl_group_size or self.group_size)
        return self.prompts_per_step, self.group_size

    def switch(self) -> int:
        """kd-then-grpo: the 0-based step at which GRPO takes over."""
        return self.switch_step if self.switch_step is not None else self.max_steps // 2

    def lr_at(self, step: int) -> float:
        """The learning rate at 0-based ``step``: ``lr`` (or a warm-up to it, then a cosine to
        ``lr * lr_floor``) over the run, or over each stage of kd-then-grpo, whose GRPO stage peaks
        at ``grpo_stage_lr``."""
        start, length, peak = 0, self.max_steps, self.lr
        if self.algorithm == "kd-then-grpo":
            start, length = (0, self.switch()) if step < self.switch() else (self.switch(), self.max_steps - self.switch())
            peak = self.grpo_stage_lr if step >= self.switch() and self.grpo_stage_lr is not None else self.lr
        floor = self.lr_floor if self.lr_schedule == "cosine" else 1.0  # constant: a cosine from lr to lr
        return warmup_cosine(peak, length, self.lr_warmup_steps, floor)(step - start)

    def eval_budget(self, split: str) -> tuple[str, int]:
        """(split, new-token budget) of an evaluation: ``"test@64"`` is ``test`` at 64 tokens; a plain
        name decodes ``max_new_tokens + eval_extra_tokens``."""
        name, _, budget = split.partition("@")
        return name, int(budget) if budget else self.max_new_tokens + self.eval_extra_tokens

    def eval_split_names(self) -> list[str]:
        """The splits named by ``eval_splits`` (empty when it is None)."""
        return [s.strip() for s in (self.eval_splits or "").split(",") if s.strip()]


def parse_set(items: list[str] | None) -> dict:
    """``["beta=0.1", "kl_kind=k3"]`` -> ``{"beta": 0.1, "kl_kind": "k3"}``: values read as YAML with the
    safe loader (no tags run; ``null`` unsets a field), keys checked against :class:`TrainConfig` at once,
    each failure one line. A value of only whitespace is that text (``prompt_suffix=`` is "")."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: write key=value, e.g. --set beta=0.1")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError as err:
            raise ValueError(f"--set {item}: {value!r} is not a plain YAML value ({getattr(err, 'problem', err)}); "
                             f"write a number, true/false, null or text (quote text starting with [, {{ or !)") from None
    check_fields(TrainConfig, out, "--set")
    return out


def load_config(path: str | Path, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (a shipped name like ``kdrl`` also works).

    The file's fields replace the dataclass defaults; ``overrides`` (``None`` values ignored)
    replace both.
    """
    path = Path(path)
    shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    if not path.exists() and str(path) in shipped:  # a bare shipped name, never a mistyped path
        path = CONFIG_DIR / f"{path}.yaml"
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise FileNotFoundError(f"config file {path} {what}; pass a YAML file or a shipped config name: {shipped}")
    try:
        values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        reason = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"{path}{line}: not a readable YAML config ({reason}); write one `field: value` per "
                         f"line, spaces not tabs, no !!tags") from None
    if not isinstance(values, dict):
        kind = "empty" if values is None else f"a {type(values).__name__}, not `field: value` lines"
        raise ValueError(f"{path} is {kind}; a config names fields, e.g. `algorithm: kdrl`")
    values.update({k: v for k, v in overrides.items() if v is not None})
    check_fields(TrainConfig, values, str(path))
    return TrainConfig(**values)
