"""CUDA-only checks (skipped without a GPU): one step of every algorithm with the shipped 4-bit
student + 8-bit teacher on the GPU, everything on the device, micro-batches and gradient
checkpointing on, through the kit's trainer and through TRL (--engine trl). No GPU has run these yet
(docs/gpu.md lists what has not)."""

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
    from kdrl_mini import models, sampling_copy

    student = models.load_student("data/models/student", "none", models.LoraSpec(r=4, alpha=8), device="cuda")
    base = next(m for m in student.modules() if hasattr(m, "base_layer")).base_layer.weight
    assert base.dtype == torch.bfloat16
    before = base.detach().clone()
    with sampling_copy.merged_lora(student):
        assert torch.equal(base, before)


def test_two_steps_of_the_t4_preset(tmp_path):
    """Two KDRL steps of the t4-16gb preset in its fp16-safe setup (fp32 compute: the shipped fp16 is refused
    on every card unless KDRL_ALLOW_FP16=1), Qwen2.5-0.5B 4-bit + LoRA, 1.5B 8-bit teacher, GSM8K, after
    the memory check; the measured peak is printed next to the estimate. Needs the models (and GSM8K)
    cached, or KDRL_TEST_HUB=1 on a machine that may download them."""
    from helpers_hub import preset_sources_reachable

    from kdrl_mini.gpu import memory as me
    from kdrl_mini.gpu.preset_study import memory_check
    from kdrl_mini.gpu.presets import estimate_preset, load_preset

    cfg, info = load_preset("t4-16gb", compute_dtype="fp32", max_steps=2, eval_every=0, eval_size=8,
                            checkpoint_every=0, output_dir=str(tmp_path / "t4"))
    if not preset_sources_reachable(cfg):
        pytest.skip("the hub is offline and the t4-16gb models are not cached (set KDRL_TEST_HUB=1 to download)")
    est, _ = estimate_preset(cfg, info)
    print(memory_check("t4-16gb", est, cfg))
    torch.cuda.reset_peak_memory_stats()
    log = Trainer(cfg).train(overwrite=True, progress=False)
    rows = [r for r in log if r.get("kind") == "train"]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and r["skipped"] == 0.0 for r in rows)
    peak = torch.cuda.max_memory_allocated()
    print(f"t4-16gb: measured peak {peak / me.GiB:.2f} GiB allocated, estimate {me.needed_bytes(est) / me.GiB:.2f} GiB; "
          f"step {rows[-1]['step_time']:.0f} s measured vs {est.step_seconds:.0f} s estimated")
    assert peak <= me.needed_bytes(est), "the estimate is too low: update kdrl_mini/gpu/memory.py"


@pytest.mark.parametrize("algorithm", ["grpo", "kd-rkl", "kdrl"])
def test_one_step_through_trl_on_cuda(tmp_path, algorithm):
    """--engine trl on the GPU: the tiny world's 4-bit student with LoRA (peft_config), 8-bit teacher, bf16
    or fp16; vLLM colocate when installed; the kit's run folder with a greedy evaluation."""
    from kdrl_mini.integrations.trl.kit_run import train_run

    cfg = load_config("kdrl", algorithm=algorithm, device="cuda", group_size=4, prompts_per_step=2, max_steps=1,
                      micro_batch_size=4, lora_r=4, gradient_checkpointing=True, eval_size=8, eval_splits="test",
                      output_dir=str(tmp_path / algorithm))
    rows = train_run(cfg, progress=False)
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 1 and math.isfinite(train[0]["loss"]) and any(r["kind"] == "eval" for r in rows)
    assert algorithm == "grpo" or math.isfinite(train[0]["kl"])
