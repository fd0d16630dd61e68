"""Presets for one GPU: a real model pair, GSM8K and settings sized for a named card.

Each ``preset_configs/<name>.yaml`` has two blocks: ``config`` (TrainConfig fields, validated like any config
file) and ``about`` (what a config cannot hold: a description, the departures from the paper, the
card's reference numbers, the KDRL coefficients of the preset study, and the models' published
``config.json`` numbers, so the memory estimate works offline). ``load_preset(name)`` returns both.

Estimates of memory and time (:mod:`kdrl_mini.gpu.memory`, :mod:`kdrl_mini.gpu.timing`) are computed, never stored: they
stay labelled estimates until ``about.measured`` holds numbers from the card.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import VLLM_MEMORY_SHARE, TrainConfig
from ..engines import ENGINES
from ..utils import vllm_installed
from .memory import estimate
from .shapes import resolve_model_config

PRESET_DIR = Path(__file__).parent / "preset_configs"


@dataclass(frozen=True)
class Machine:
    """The card a preset is sized for (datasheet numbers of a reference card)."""

    name: str
    memory_gib: float
    bf16: bool
    tflops: float            # dense 16-bit tensor peak
    bandwidth_gbs: float
    fp32_tflops: float | None = None  # dense fp32 peak (compute_dtype fp32); None: not stated


@dataclass(frozen=True)
class StudyCoefficients:
    """KDRL's coefficients in the preset study: constant ``beta``; the annealed run goes linearly
    from ``anneal_start`` to ``anneal_floor`` within ``anneal_fraction`` of the steps, then holds."""

    beta: float
    anneal_start: float
    anneal_floor: float
    anneal_fraction: float
    seeds: tuple[int, ...] = (0,)

    def anneal_steps(self, max_steps: int) -> int:
        return max(1, round(self.anneal_fraction * max_steps))


@dataclass(frozen=True)
class ModelInfo:
    """A hub model: its id, published parameter count and ``config.json`` numbers."""

    name: str
    parameters: int
    config: dict


@dataclass(frozen=True)
class PresetInfo:
    """Everything about a preset that is not a TrainConfig field."""

    name: str
    description: str
    machine: Machine
    departures: tuple[str, ...]
    prompt_tokens: int
    study: StudyCoefficients
    student: ModelInfo
    teacher: ModelInfo
    engine: str = "kit"      # which trainer the preset's study runs on ("kit" or "trl")
    engine_why: str = ""     # and why, stated in the preset file
    measured: dict | None = None
    path: Path = field(default=PRESET_DIR)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str, **overrides) -> tuple[TrainConfig, PresetInfo]:
    """(TrainConfig, PresetInfo) of a shipped preset; ``overrides`` replace config fields."""
    names = preset_names()
    path = PRESET_DIR / f"{name}.yaml"
    if name not in names:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(names)}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or set(data) != {"about", "config"}:
        raise ValueError(f"{path}: a preset has exactly two blocks, `about:` and `config:`")
    values = {**data["config"], **{k: v for k, v in overrides.items() if v is not None}}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config field(s) {unknown}; descriptions go in the `about:` block")
    cfg = TrainConfig(**values)
    return cfg, _info(name, data["about"], path)


def _info(name: str, about: dict, path: Path) -> PresetInfo:
    engine = (about.get("engine") or {}).get("name") if isinstance(about, dict) else None
    if engine not in ENGINES:
        raise ValueError(f"{path}: about.engine.name={engine!r}; choose one of {list(ENGINES)} and say why")
    try:
        models = {role: ModelInfo(**about["models"][role]) for role in ("student", "teacher")}
        study = dict(about["study"])
        study["seeds"] = tuple(study.get("seeds", (0,)))
        return PresetInfo(name=name, description=" ".join(about["description"].split()),
                          machine=Machine(**about["machine"]), departures=tuple(about["departures"]),
                          prompt_tokens=int(about["prompt_tokens"]), study=StudyCoefficients(**study),
                          engine=about["engine"]["name"], engine_why=" ".join(about["engine"]["why"].split()),
                          measured=about.get("measured"), path=path, **models)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: the `about:` block is incomplete or has an unknown key ({err}); "
                         f"compare with t4-16gb.yaml") from None


def estimate_preset(cfg: TrainConfig, info: PresetInfo, use_source: bool = True):
    """The memory (and step-time) estimate of ``cfg`` on the preset's card.

    Real ``config.json`` files (local folder or hub cache) are preferred when ``use_source``;
    offline without them, the preset's published numbers are used. Returns (estimate, sources).
    """
    student, s_src = resolve_model_config(cfg.student_path, info.student.config if
                                             cfg.student_path == info.student.name else None, use_source)
    teacher, t_src = resolve_model_config(cfg.teacher_path, info.teacher.config if
                                             cfg.teacher_path == info.teacher.name else None, use_source)
    m = info.machine
    tflops = m.fp32_tflops if cfg.compute_dtype == "fp32" and m.fp32_tflops else m.tflops
    vllm = int(VLLM_MEMORY_SHARE * m.memory_gib * 2**30) if generation_path(info) == "vllm" else None
    est = estimate(cfg, student, teacher, info.prompt_tokens, tflops, m.bandwidth_gbs, vllm)
    return est, {"student": s_src, "teacher": t_src}


def generation_path(info: PresetInfo) -> str:
    """The rollouts' path a run of ``info`` takes, which the estimate prices: "vllm" (the TRL engine with vLLM
    installed, colocated on the card) or "hf" (HF ``generate``: the kit's engine, or TRL without vLLM)."""
    return "vllm" if info.engine == "trl" and vllm_installed() else "hf"


def fp16_refusal(name: str, cfg: TrainConfig, card_bf16: bool) -> str | None:
    """One line refusing a run that would compute in fp16 (a T4, or ``compute_dtype: fp16``), else None.

    Qwen2.5 in fp16 is a known source of NaN / garbage output (activations overflow fp16's range); a NaN
    teacher log-prob skips the step, and three in a row stop the run. ``KDRL_ALLOW_FP16=1`` runs it anyway."""
    fp16 = cfg.compute_dtype == "fp16" or (cfg.compute_dtype == "auto" and not card_bf16)
    if not fp16 or os.environ.get("KDRL_ALLOW_FP16") == "1":
        return None
    fix = ("add --set compute_dtype=bf16" if card_bf16 else "use a bf16 card (Ampere or newer, e.g. preset 24gb), or "
           "the fp16-safe setup --set compute_dtype=fp32 (fp32 matmuls; the 8-bit teacher's outlier columns and "
           "output stay fp32; slower: see the estimate)")
    return (f"preset {name} would compute in fp16, where Qwen2.5 models are known to overflow into NaN or garbage "
            f"(NaN teacher log-probs skip steps; three in a row stop the run); {fix}, or set KDRL_ALLOW_FP16=1 "
            f"to run it anyway and watch the skipped column")
