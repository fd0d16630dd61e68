"""Short real runs of every algorithm on the shipped world (CPU, a few steps each)."""

import json

import pytest
import torch

from kdrl_mini.config import ALGORITHMS, TrainConfig, load_config
from kdrl_mini.trainer import Trainer, read_metrics

TIMING = ("step_time", "rollout_time", "teacher_time", "train_time", "rollout_tok_s", "train_tok_s")


def small(tmp_path, name, **kw):
    base = dict(group_size=4, prompts_per_step=2, max_new_tokens=40, max_steps=2, eval_every=0,
                eval_size=4, checkpoint_every=2, output_dir=str(tmp_path / name), lr=5e-3)
    base.update(kw)
    return load_config("kdrl", **base)


def untimed(lines):
    return [{k: v for k, v in l.items() if k not in TIMING} for l in lines]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_runs_and_logs(tmp_path, algorithm):
    cfg = small(tmp_path, algorithm, algorithm=algorithm)
    Trainer(cfg).train(progress=False)
    steps, evals = read_metrics(cfg.output_dir)
    assert [s["step"] for s in steps] == [1, 2]
    assert {e["split"] for e in evals} == {"test", "ood"}
    must = {"loss", "entropy", "exact_kl", "step_time", "rollout_tok_s", "train_tok_s", "beta"}
    must |= {"teacher_reward"} if algorithm == "kd-fkl" else {"reward", "accuracy", "response_length"}
    if algorithm in ("grpo", "kdrl"):
        must |= {"clip_frac", "kl"}
    if algorithm == "kdrl":
        must |= {"kd_masked_frac"}
    for s in steps:
        assert must <= s.keys(), must - s.keys()
        assert all(v == v for k, v in s.items() if k != "kl"), s  # no NaN
    assert (tmp_path / algorithm / "checkpoint.pt").is_file()
    assert (tmp_path / algorithm / "adapter" / "adapter_config.json").is_file()


def _final_weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["trainable"]


def test_kdrl_with_beta_zero_is_grpo(tmp_path):
    a = small(tmp_path, "grpo", algorithm="grpo", student_quant="none")
    b = small(tmp_path, "kdrl0", algorithm="kdrl", beta=0.0, student_quant="none")
    Trainer(a).train(progress=False)
    Trainer(b).train(progress=False)
    sa, sb = read_metrics(a.output_dir)[0], read_metrics(b.output_dir)[0]
    for x, y in zip(sa, sb):
        assert x["reward"] == y["reward"] and x["loss"] == y["loss"]
    wa, wb = _final_weights(tmp_path / "grpo"), _final_weights(tmp_path / "kdrl0")
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


def test_resume_continues_with_identical_metrics(tmp_path):
    full = small(tmp_path, "full", max_steps=4, eval_every=2)
    Trainer(full).train(progress=False)
    part = small(tmp_path, "part", max_steps=2, eval_every=2)
    Trainer(part).train(progress=False)
    # the interrupted run wrote a stray line after its checkpoint: resume must drop it
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "reward": -1.0}) + "\n")
    Trainer(part.replace(max_steps=4)).train(resume=True, progress=False)
    a, b = read_metrics(full.output_dir), read_metrics(part.output_dir)
    assert untimed(a[0]) == untimed(b[0])
    assert a[1] == b[1]


def test_resume_without_checkpoint_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(small(tmp_path, "none")).train(resume=True, progress=False)


def _kl_on_fixed_batch(trainer, batch) -> float:
    """Exact KL(student || teacher) per token on one fixed batch of sequences."""
    from kdrl_mini.kl import exact_kl
    from kdrl_mini.rollout import token_logprobs

    with torch.no_grad():
        _, s = token_logprobs(trainer.world.student, batch, return_logits=True)
        _, t = token_logprobs(trainer.world.teacher, batch, return_logits=True)
    mask = batch.completion_mask
    return float((exact_kl(s, t) * mask).sum() / mask.sum())


def test_kl_in_loss_and_in_reward_pull_towards_the_teacher(tmp_path):
    """After a short run both KDRL forms are closer to the teacher than GRPO, measured on one
    fixed batch of the initial student's samples (so the measurement itself adds no noise)."""
    from kdrl_mini.rollout import sample

    common = dict(max_steps=12, student_quant="none", teacher_quant="none", lr=1e-3, prompts_per_step=4)
    runs = {
        "grpo": small(tmp_path, "grpo", algorithm="grpo", **common),
        "loss": small(tmp_path, "loss", algorithm="kdrl", beta=0.5, kl_kind="k2", **common),
        "reward": small(tmp_path, "reward", algorithm="kdrl", beta=0.05, kl_mode="reward", kl_kind="k1", **common),
    }
    final, probe = {}, None
    for name, cfg in runs.items():
        trainer = Trainer(cfg)
        if probe is None:
            torch.manual_seed(123)
            prompts = [r["prompt"] for r in trainer.world.test[:16]]
            probe = sample(trainer.world.student, trainer.world.tokenizer, prompts, group_size=2, max_new_tokens=48)
            start = _kl_on_fixed_batch(trainer, probe)
        trainer.train(progress=False)
        final[name] = _kl_on_fixed_batch(trainer, probe)
    print(start, final)
    assert final["loss"] < final["grpo"]
    assert final["reward"] < final["grpo"]
