"""One vocabulary by tokenizer (padded embedding rows are cut, not compared) and the CUDA compute
dtype's loss scaling, exercised on CPU."""

import pytest
import torch

from kdrl_mini import models, sampling_copy, vocab
from kdrl_mini.rollout import sample
from kdrl_mini.scoring import score_groups, token_logprobs

STUDENT = "data/models/student"


@pytest.fixture(scope="module")
def padded_dir(tmp_path_factory):
    """The tiny student with 16 padding rows past its 80-token tokenizer (as Qwen2.5 pads 151,665
    tokens to 151,936 rows); the padding rows get large logits so that, uncut, they would matter."""
    out = tmp_path_factory.mktemp("padded")
    model = models.load_causal_lm(STUDENT, "none")
    model.resize_token_embeddings(96, mean_resizing=False)
    with torch.no_grad():
        model.get_output_embeddings().weight[80:] = 0.5 * torch.randn(16, model.config.hidden_size)
    model.save_pretrained(out)
    models.load_tokenizer(STUDENT).save_pretrained(out)
    return out


def test_shared_vocab_is_the_tokenizer_when_rows_are_padded(tokenizer):
    assert vocab.shared_vocab(tokenizer, 80, 80) is None  # nothing to cut: the tiny world
    assert vocab.shared_vocab(tokenizer, 96, 80) == 80
    assert vocab.shared_vocab(tokenizer, 96, 112) == 80
    with pytest.raises(ValueError, match="teacher has 70 logit rows but the tokenizer has 80 tokens"):
        vocab.shared_vocab(tokenizer, 80, 70)
    assert vocab.config_vocab_rows({"vocab_size": 151936}) == 151936
    assert vocab.config_vocab_rows({"text_config": {"vocab_size": 7}}) == 7
    assert vocab.config_vocab_rows({}) is None


def test_padded_pair_is_refused_uncut_and_accepted_cut(padded_dir, tokenizer):
    student = models.load_causal_lm(padded_dir, "none")
    teacher = models.load_causal_lm(STUDENT, "none")
    with pytest.raises(ValueError, match=r"teacher vocabulary \(80\) differs from student \(96\)"):
        vocab.check_same_vocab(student, teacher, tokenizer)
    vocab.restrict_vocab(student, 80)
    vocab.restrict_vocab(student, 80)  # idempotent
    with pytest.raises(ValueError, match="already cut to 80"):
        vocab.restrict_vocab(student, 90)
    vocab.check_same_vocab(student, teacher, tokenizer)


def test_cut_logits_score_and_sample_only_real_tokens(padded_dir, tokenizer):
    uncut = models.load_causal_lm(padded_dir, "none")
    cut = vocab.restrict_vocab(models.load_causal_lm(padded_dir, "none"), 80)
    torch.manual_seed(0)
    batch = sample(cut, tokenizer, ["Compute 37+8-5+9.\n"] * 2, group_size=8, max_new_tokens=12)
    assert int(batch.completion_ids.max()) < 80
    logp, logits = token_logprobs(cut, batch, return_logits=True)
    assert logits.shape[-1] == 80
    full = token_logprobs(uncut, batch, return_logits=True)[1]
    ref = torch.log_softmax(full[..., :80].float(), -1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=0)
    uncut_logp = torch.log_softmax(full.float(), -1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    assert (uncut_logp - ref).abs().max() > 1e-3  # the padding rows held real mass: cutting matters here
    grouped, kept = score_groups(cut, batch, group_size=8, keep_logits=True)
    torch.testing.assert_close(grouped, logp, atol=2e-5, rtol=0)
    assert kept.shape[-1] == 80


def test_sampling_copy_keeps_the_cut(padded_dir, tokenizer):
    student = models.load_student(padded_dir, "none", models.LoraSpec(r=2, alpha=4))
    vocab.restrict_vocab(student, 80)
    copy = sampling_copy.MergedCopy(student).model
    ids = torch.tensor([[5, 6, 7]])
    assert copy(input_ids=ids).logits.shape[-1] == 80
    torch.testing.assert_close(copy(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-4, rtol=0)


def test_compute_dtype_is_fp32_on_cpu():
    for name in ("auto", "bf16", "fp16"):
        assert models.compute_dtype(name, torch.device("cpu")) == torch.float32


def test_loss_scaling_path_gives_the_unscaled_update(tmp_path):
    """The fp16 path's GradScaler wiring (scale, unscale before clipping, scaler.step), run on CPU in
    fp32 where scaling by a power of two is exact: the update must equal the plain one."""
    from kdrl_mini.config import load_config
    from kdrl_mini.trainer import Trainer

    cfg = load_config("kdrl", group_size=2, prompts_per_step=2, max_new_tokens=12, max_steps=1, eval_size=4,
                      output_dir=str(tmp_path / "a"))
    plain = Trainer(cfg)
    world = plain.world
    start = {n: p.detach().clone() for n, p in world.student.named_parameters() if p.requires_grad}
    torch.manual_seed(1)
    plain.train_step()
    after_plain = {n: p.detach().clone() for n, p in world.student.named_parameters() if p.requires_grad}
    with torch.no_grad():  # back to the same start, same optimiser state
        for n, p in world.student.named_parameters():
            if p.requires_grad:
                p.copy_(start[n])
    scaled = Trainer(cfg.replace(output_dir=str(tmp_path / "b")), world=world)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    torch.manual_seed(1)
    row = scaled.train_step()
    assert row["skipped"] == 0.0
    for n, p in world.student.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), after_plain[n], atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(after_plain[n], start[n]) for n in start)  # the step moved something
    assert scaled.scaler.get_scale() == 2.0**10  # no overflow, so the scale holds



def test_load_world_cuts_a_padded_student_to_the_teachers_tokens(padded_dir):
    """A student with padding rows (96) and a teacher without (80), one tokenizer: the world loads,
    both models give 80 logit columns, and a training step runs."""
    from kdrl_mini.config import load_config
    from kdrl_mini.runs.loading import load_world
    from kdrl_mini.study.runner import _fresh_student
    from kdrl_mini.trainer import Trainer

    cfg = load_config("kdrl", student_path=str(padded_dir), group_size=2, prompts_per_step=2, max_new_tokens=8,
                      max_steps=1, eval_size=2, output_dir="unused")
    world = load_world(cfg)
    ids = torch.tensor([[5, 6, 7]])
    assert world.student(input_ids=ids).logits.shape[-1] == world.teacher(input_ids=ids).logits.shape[-1] == 80
    assert _fresh_student(world, cfg).student.kdrl_vocab == 80  # the study's fresh students keep the cut
    row = Trainer(cfg, world=world).train_step()
    assert row["skipped"] == 0.0 and row["exact_kl"] == row["exact_kl"]  # exact KL over 80 columns, not NaN
