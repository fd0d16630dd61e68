"""Shared check for the 4-bit CPU gradient trap: 4-bit LoRA gradients vs a dequantized fp32 twin.

Used by tests on any checkpoint (the tiny world, the real SmolLM2 pair). The reference is an
fp32 model whose linear weights are the 4-bit model's *dequantized* NF4 weights and whose LoRA
adapters, norms and embeddings are copies, so both compute the same function up to float
rounding: any larger gradient difference comes from the quantised kernels.
"""

from __future__ import annotations

import torch

from kdrl_mini import models
from kdrl_mini.rollout import teacher_forced_batch
from kdrl_mini.scoring import token_logprobs


def randomize_lora_b(model, std: float = 0.02) -> None:
    """Give every ``lora_B`` non-zero values (peft inits them at 0), so each adapter's gradient
    flows through the frozen base weights and a wrong base kernel shows up in it."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)


def dequantized_reference(student_4bit, model_dir, lora: models.LoraSpec):
    """An fp32 peft model holding ``student_4bit``'s dequantized weights and the same adapters.

    student_4bit: a peft model from ``models.load_student(model_dir, "4bit", lora)``.
    """
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model

    ref = models.load_causal_lm(model_dir, "none")
    ref = get_peft_model(ref, LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=lora.target_modules,
                                         lora_dropout=0.0))
    ref_params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, module in student_4bit.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                ref_params[name + ".weight"].copy_(w.float())
        for name, p in student_4bit.named_parameters():
            if p.requires_grad or "norm" in name or "embed" in name or "bias" in name:
                ref_params[name].copy_(p.float())
    return ref


def lora_gradients(model, tokenizer, prompts: list[str], completions: list[str]) -> dict[str, torch.Tensor]:
    """Gradients of the trainable parameters for the summed log-likelihood of ``completions``
    (teacher forcing, train mode); name -> grad, same shapes as the parameters."""
    model.train()
    model.zero_grad(set_to_none=True)
    batch = teacher_forced_batch(tokenizer, prompts, completions, "cpu")
    loss = -(token_logprobs(model, batch) * batch.completion_mask).sum()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def relative_errors(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """|g - g_ref| / |g_ref| (Frobenius norms) per parameter; both dicts must name the same parameters."""
    if grads.keys() != reference.keys():
        raise AssertionError(f"trainable parameters differ: {sorted(set(grads) ^ set(reference))[:3]}")
    return {n: float((grads[n] - reference[n]).norm() / reference[n].norm().clamp(min=1e-12)) for n in grads}
