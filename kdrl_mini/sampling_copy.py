"""Sampling from a LoRA student fast: LoRA folded into an fp32 base for ``generate``
(:func:`merged_lora`), or a plain fp32 copy of the student's current weights, dequantised when the
base is 4-bit/8-bit, with LoRA merged (:class:`MergedCopy`); :class:`RolloutPolicy` picks which
weights a rollout samples from."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .vocab import restrict_vocab


@contextmanager
def merged_lora(model):
    """Generate with LoRA folded into an fp32 base (one matmul per layer instead of three), then
    restore the base weights bit-exactly (unmerging alone would leave rounding residue).

    Only fp32 bases are merged: merging into bf16/fp16 weights would round small LoRA updates
    away (and clone every adapted weight on the GPU). Quantised or half-precision bases and
    models without LoRA are used as they are.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers or not all(m.get_base_layer().weight.dtype == torch.float32 for m in layers):
        yield model
        return
    saved = [(m.get_base_layer().weight, m.get_base_layer().weight.detach().clone()) for m in layers]
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)


def _dense_weight(layer) -> torch.Tensor:
    """The full-precision weight of a linear layer: dequantised for bitsandbytes 4-bit/8-bit."""
    w = layer.weight
    if getattr(w, "quant_state", None) is not None:  # NF4
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(w.data, w.quant_state).to(torch.float32)
    if w.dtype == torch.int8:  # LLM.int8: one scale per output row
        scb = getattr(w, "SCB", None)
        if scb is None:
            scb = layer.state.SCB
        return w.data.float() * (scb.float().unsqueeze(1) / 127.0)
    return w.detach().to(torch.float32, copy=True)  # a copy: the caller adds LoRA deltas to it in place


class MergedCopy:
    """A plain fp32 model holding a LoRA student's current weights: base weights (dequantised
    when 4-bit/8-bit) with the LoRA update merged in.

    Sampling from it is sampling from the student's policy (its layers compute W x + LoRA(x),
    with W = dequant(W_q) for a quantised base), but with one dense matmul per layer and no
    bitsandbytes or peft call overhead, and without touching the trained model (no merge and
    restore). ``refresh()`` copies the current weights in (once per rollout). It costs one fp32
    copy of the student's weights: used on CPU by default, where the kit's students are small.
    """

    def __init__(self, student):
        from transformers import AutoModelForCausalLM

        base = student.get_base_model() if hasattr(student, "get_base_model") else student
        config = base.config.to_dict()
        config.pop("quantization_config", None)
        config = type(base.config).from_dict(config)
        self.student, self.base = student, base
        with torch.random.fork_rng(devices=[]):  # random init of the copy must not move the run's RNG stream
            self.model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval().requires_grad_(False)
        self.model.generation_config = base.generation_config
        restrict_vocab(self.model, getattr(student, "kdrl_vocab", None))  # the same logit columns as the student
        self.refresh()

    @torch.no_grad()
    def refresh(self):
        """Copy the student's current weights in; returns the fp32 model."""
        params = dict(self.model.named_parameters())
        for name, weight in dense_weights(self.student):
            if name in params and params[name].shape == weight.shape:
                params[name].copy_(weight)
        return self.model


@torch.no_grad()
def dense_weights(student, dtype: torch.dtype | None = None):
    """Yield (name, tensor) for every weight of ``student``'s base model under the name a plain checkpoint
    gives it (``model.layers.0.self_attn.q_proj.weight``), one tensor at a time, never touching the
    student: linear layers dequantised when 4-bit/8-bit, in fp32 with the active LoRA updates added (then
    cast to ``dtype`` when given); LoRA's own weights skipped; other weights (embeddings, norms, biases)
    as they are; a tied weight once."""
    from peft.tuners.lora import LoraLayer

    base = student.get_base_model() if hasattr(student, "get_base_model") else student
    lora = {name for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    seen = set()
    for name, module in base.named_modules():
        if any(name.startswith(p + ".") for p in lora):
            continue  # base_layer, lora_A, lora_B, dropout of a LoRA layer: handled with the layer itself
        if name in lora or is_quantised_linear(module):
            layer = module.get_base_layer() if name in lora else module
            weight = _dense_weight(layer)
            for adapter in (module.active_adapters if name in lora else ()):
                weight += module.get_delta_weight(adapter).float()
            seen.add(id(layer.weight))
            yield f"{name}.weight", weight if dtype is None else weight.to(dtype)
            if layer.bias is not None:
                seen.add(id(layer.bias))
                yield f"{name}.bias", layer.bias.detach()
            continue
        for pname, p in module.named_parameters(recurse=False):
            if id(p) not in seen and p.is_floating_point():
                seen.add(id(p))
                yield (f"{name}.{pname}" if name else pname), p.detach()


def check_copy_device(device: torch.device) -> None:
    """Refuse, in one line, a plain fp32 copy for models that are not on the CPU: the copy is built on the CPU
    (about 7 GB for a 1.5B student, 30 GB for KD-FKL's 7B teacher), its samples would meet a teacher on the
    card, and on a GPU sampling from the model itself is the fast path."""
    if device.type != "cpu":
        raise ValueError(f"rollout_copy: true builds an fp32 copy of the models on the CPU, but they are on {device}; "
                         f"set rollout_copy: false (or null: a copy on the CPU only)")


def is_quantised_linear(module) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and (getattr(w, "quant_state", None) is not None or w.dtype == torch.int8)


class RolloutPolicy:
    """The weights a rollout samples from. The student: its plain copy (``use_copy``: refreshed from
    the current weights once per rollout) or, without one, the student itself with LoRA merged for
    the call. The teacher (KD-FKL's rollouts): on a copy-using run a plain fp32 copy of its
    dequantised weights, built once (the teacher is frozen): 2.6x faster than LLM.int8 matmuls on
    CPU, log-probs within 0.006 of the 8-bit model's (which also quantises activations)."""

    def __init__(self, student, teacher, use_copy: bool):
        if use_copy:
            check_copy_device(next(student.parameters()).device)
        self.student, self.teacher = student, teacher
        self.copy = MergedCopy(student) if use_copy else None
        self.teacher_copy = None

    @contextmanager
    def student_policy(self):
        if self.copy is not None:
            yield self.copy.refresh()
        else:
            self.student.eval()
            with merged_lora(self.student) as merged:
                yield merged

    def teacher_policy(self):
        if self.copy is None or not any(is_quantised_linear(m) for m in self.teacher.modules()):
            return self.teacher
        if self.teacher_copy is None:
            self.teacher_copy = MergedCopy(self.teacher).model
        return self.teacher_copy
