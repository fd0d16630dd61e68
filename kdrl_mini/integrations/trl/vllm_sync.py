"""vLLM colocated with a LoRA student: vLLM holds the student's dense weights, pushed each step without
touching the model being trained.

TRL 1.16 starts vLLM with ``quantization="bitsandbytes"`` when the student has a 4-bit layer, then, at each
weight sync, merges the LoRA adapter into the PeftModel and sends its parameters: the packed 4-bit
weights reach vLLM without their quantisation state and its loader fails on their shape (TRL issue
#4973), and every merge / unmerge re-rounds the frozen base (NF4, or a 16-bit base), so it drifts
step after step. Here vLLM loads the checkpoint unquantised (16-bit, as for a plain model), and each
sync sends :func:`kdrl_mini.sampling_copy.dense_weights`: every base weight dequantised, with the LoRA
update added out of place, in the compute dtype. The trained model is only read.

The hooks are TRL 1.16's: the module-level ``is_bitsandbytes_available`` that ``_init_vllm`` consults,
``VLLMGeneration._iter_named_params`` (what a sync sends) and the ``VLLMGeneration`` name
``GRPOTrainer.__init__`` builds. :func:`dense_vllm` refuses, in one line, a TRL without them.
"""

from __future__ import annotations

from contextlib import contextmanager

import trl.generation.vllm_generation as vllm_generation
import trl.trainer.grpo_trainer as grpo_trainer

from ...sampling_copy import dense_weights


@contextmanager
def swapped(module, name: str, value):
    """``module.name`` set to ``value`` inside the block, restored after it."""
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


class DenseVLLMGeneration(vllm_generation.VLLMGeneration):
    """TRL's vLLM backend with an unquantised vLLM and dense weight syncs (module docstring)."""

    def _init_vllm(self):
        with swapped(vllm_generation, "is_bitsandbytes_available", lambda: False):  # vLLM loads the 16-bit checkpoint
            super()._init_vllm()

    def _iter_named_params(self):
        if self._dist.is_fsdp:
            raise ValueError("vLLM with a sharded (FSDP) student is not supported by the kit's dense weight sync; "
                             "set use_vllm=False or train without FSDP")
        with self._dist.gather_params(list(self.model.parameters())):  # a no-op unless DeepSpeed ZeRO-3
            dtype = self.model.get_input_embeddings().weight.dtype  # the run's compute dtype (vLLM casts on load)
            yield from dense_weights(self.model, dtype)


@contextmanager
def dense_vllm():
    """While a ``GRPOTrainer`` is built inside this block, its vLLM backend is :class:`DenseVLLMGeneration`."""
    missing = [n for n, m in (("is_bitsandbytes_available", vllm_generation), ("VLLMGeneration", grpo_trainer))
               if not hasattr(m, n)] + [n for n in ("_init_vllm", "_iter_named_params")
                                         if not hasattr(vllm_generation.VLLMGeneration, n)]
    if missing:
        raise ValueError(f"this TRL lacks {missing}, which the kit's dense vLLM weight sync replaces; install the "
                         f"tested TRL (constraints.txt) or set use_vllm=False")
    with swapped(grpo_trainer, "VLLMGeneration", DenseVLLMGeneration):
        yield
