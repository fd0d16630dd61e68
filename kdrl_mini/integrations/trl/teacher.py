"""KDRLTrainer's frozen teacher: how it is loaded (LLM.int8 or NF4 on CUDA as the config asks, fp32 on the
CPU) and placed (on the process's device, or prepared by TRL under DeepSpeed ZeRO-3)."""

from __future__ import annotations

import torch

from ... import models
from .config import KDRLConfig


def teacher_init_kwargs(args: KDRLConfig, device: torch.device) -> dict:
    """``from_pretrained`` keyword arguments of a teacher path: ``teacher_model_init_kwargs`` plus, on CUDA, the
    quantisation ``teacher_load_in_8bit`` / ``teacher_load_in_4bit`` ask for (unless a ``quantization_config``
    is given) on this process's card; on the CPU fp32 unless a dtype is given."""
    kw = dict(args.teacher_model_init_kwargs or {})
    quant = "8bit" if args.teacher_load_in_8bit else "4bit" if args.teacher_load_in_4bit else "none"
    if device.type == "cuda" and quant != "none" and "quantization_config" not in kw:
        dtype = kw.get("dtype", torch.bfloat16)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype  # JSON configs name it ("bfloat16")
        kw["quantization_config"] = models.quant_config(quant, dtype)  # NF4 computes in the run's dtype
        kw.setdefault("device_map", {"": device})
    elif device.type == "cpu":
        kw.setdefault("dtype", torch.float32)
    return kw


def load_teacher(teacher, args: KDRLConfig, accelerator, deepspeed: bool):
    """The teacher (a path, or a loaded model) frozen, in eval mode, on ``accelerator.device``."""
    from transformers import AutoModelForCausalLM

    if isinstance(teacher, str):
        with torch.random.fork_rng(devices=[]):  # loading must not move the RNG: kd_beta=0 parity with GRPO
            teacher = AutoModelForCausalLM.from_pretrained(teacher, **teacher_init_kwargs(args, accelerator.device))
    quantised = getattr(teacher, "is_quantized", False) or getattr(teacher, "hf_quantizer", None) is not None
    teacher.eval()
    teacher.requires_grad_(False)
    if deepspeed and not quantised:
        # under ZeRO-3 a model loaded after the trainer is partitioned; TRL's own preparation (as for its
        # reference model) gathers it for the forward instead of running it on empty shards
        from trl.models import prepare_deepspeed

        return prepare_deepspeed(teacher, accelerator)
    return teacher if quantised else teacher.to(accelerator.device)
