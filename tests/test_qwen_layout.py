"""The one-GPU path on CPU with a tiny random Qwen2 pair in Qwen2.5's vocabulary layout (151,665
tokens; student 151,936 tied rows, teacher 152,064 untied): one KDRL step through the kit's trainer
with bf16 standing in for CUDA's compute dtype, and one through KDRLTrainer (TRL)."""

import math

import pytest
import torch

from helpers_qwen_layout import STUDENT_ROWS, TEACHER_ROWS, TOKENS, write_pair
from kdrl_mini import models
from kdrl_mini.vocab import vocab_size_of
from kdrl_mini.config import load_config
from kdrl_mini.runs import metrics
from kdrl_mini.trainer import Trainer


@pytest.fixture(scope="module")
def qwen_pair(tmp_path_factory, data_dir):
    return write_pair(data_dir / "models" / "student", tmp_path_factory.mktemp("qwen_layout"))


def _cfg(pair, tmp_path, **kw):
    student, teacher = pair
    base = dict(student_path=str(student), teacher_path=str(teacher), student_quant="4bit", teacher_quant="8bit",
                lora_r=4, lora_alpha=8, gradient_checkpointing=True, group_size=2, prompts_per_step=2,
                max_new_tokens=6, micro_batch_size=2, max_steps=1, eval_every=0, eval_size=2, device="cpu",
                output_dir=str(tmp_path / "run"))
    return load_config("kdrl", **{**base, **kw})


def test_bf16_end_to_end_kv_cache_and_first_epoch_ratio(qwen_pair, tmp_path, monkeypatch):
    """bf16 stands in for CUDA's compute dtype: the 4-bit student keeps its embeddings, head and norms in
    bf16 (peft's fp32 cast would make every layer, and the KV cache, fp32), sampling runs in bf16 (the
    keys that fill the KV cache are bf16), old log-probs equal the first epoch's training log-probs bit
    for bit (PPO ratio exactly 1), only the 28 LoRA tensors train, and one KDRL step is finite."""
    monkeypatch.setattr(models, "compute_dtype", lambda name="auto", device=None: torch.bfloat16)
    trainer = Trainer(_cfg(qwen_pair, tmp_path, ppo_epochs=2, rollout_copy=False))
    student, teacher = trainer.world.student, trainer.world.teacher
    assert trainer.dtype == torch.bfloat16
    assert student.kdrl_vocab == teacher.kdrl_vocab == TOKENS
    assert vocab_size_of(student) == STUDENT_ROWS and vocab_size_of(teacher) == TEACHER_ROWS
    frozen = {p.dtype for p in student.parameters() if not p.requires_grad and p.is_floating_point()}
    assert frozen == {torch.bfloat16}
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert len(trainable) == 28 and all("lora_" in n for n in trainable)

    seen = []
    k_proj = student.get_base_model().model.layers[0].self_attn.k_proj
    hook = k_proj.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    ro = trainer.collect([trainer.world.train[i] for i in range(2)], 0.1, metrics.Laps(trainer.device))
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert ro.teacher_logp.shape == ro.old_logp.shape == ro.mask.shape

    student.train()
    fresh = torch.cat([trainer.student_logprobs(ro.batch.rows(slice(i, i + 2)))[0] for i in range(0, 4, 2)])
    assert torch.equal(fresh.detach(), ro.old_logp)  # ratio = exp(logp - old_logp) == 1 exactly

    row = trainer.train_step()
    assert row["skipped"] == 0.0 and math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])


def test_one_kdrl_step_through_kdrl_trainer(qwen_pair, tmp_path):
    """The same pair through TRL (``--engine trl``'s mapping): a 4-bit student with LoRA from peft_config,
    the teacher's 152,064 rows and the student's 151,936 cut to the tokenizer's 151,665, a chat template
    and a prompt suffix; one step trains only the adapters and logs a finite KL."""
    pytest.importorskip("trl")
    from kdrl_mini.integrations.trl.launch import train_with_trl

    cfg = _cfg(qwen_pair, tmp_path, chat_template=True, prompt_suffix=" Compute.", micro_batch_size=1)
    summary = train_with_trl(cfg, rows=4, dump_weights=True)  # micro-batches of 1, accumulated over the step
    assert summary["steps"] == 1 and all(math.isfinite(k) for k in summary["kd_kl"])
    state = torch.load(tmp_path / "run" / "rank0.pt", weights_only=True)
    assert len(state) == 28 and all("lora_" in n for n in state)
