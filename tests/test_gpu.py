"""CUDA-only checks (skipped without a GPU): one step of every algorithm with the shipped 4-bit
student + 8-bit teacher on the GPU, everything on the device, micro-batches and gradient
checkpointing on. No GPU has run these yet (see the trainer v2 note)."""

import math

import pytest
import torch

from kdrl_mini.config import ALGORITHMS, load_config
from kdrl_mini.trainer import Trainer

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_step_of_every_algorithm_on_cuda(tmp_path, algorithm):
    cfg = load_config("kdrl", algorithm=algorithm, device="cuda", group_size=4, prompts_per_step=2, max_steps=1,
                      eval_every=0, eval_size=4, micro_batch_size=4, gradient_checkpointing=True,
                      output_dir=str(tmp_path / algorithm))
    trainer = Trainer(cfg)
    torch.cuda.reset_peak_memory_stats()
    row = trainer.train_step()
    assert row["skipped"] == 0.0 and math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
    assert all(p.device.type == "cuda" for p in trainer.params)
    assert torch.cuda.max_memory_allocated() < 2**30  # the tiny world needs far less than 1 GiB


def test_merged_lora_leaves_bf16_bases_alone():
    """On the GPU the student's base is bf16: merging would round small LoRA updates away."""
    from kdrl_mini import models

    student = models.load_student("data/models/student", "none", models.LoraSpec(r=4, alpha=8), device="cuda")
    base = next(m for m in student.modules() if hasattr(m, "base_layer")).base_layer.weight
    assert base.dtype == torch.bfloat16
    before = base.detach().clone()
    with models.merged_lora(student):
        assert torch.equal(base, before)
