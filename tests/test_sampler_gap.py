"""The sampler-learner gap (kdrl_mini.lessons.sampler_gap): TRL's importance-weight rules, the exact
bandit estimator, the gap statistics, and the kit's fp32 copy matching a 4-bit LoRA learner."""

import math

import pytest
import torch

from kdrl_mini.lessons import sampler_gap as sg


@pytest.fixture
def logps():
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    sampler = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-1.0, -3.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    return logp, sampler, mask


def test_token_modes_follow_trl(logps):
    logp, sampler, mask = logps
    ratio = ((logp - sampler) * mask).exp()                     # [[e^.5, e^-1, 1, 1], [1, e^2, 1, 1]]
    torch.testing.assert_close(sg.importance_weights(logp, sampler, mask, "token_truncate", clip_max=3.0),
                               ratio.clamp(max=3.0))
    masked = sg.importance_weights(logp, sampler, mask, "token_mask", clip_min=0.5, clip_max=3.0)
    torch.testing.assert_close(masked, ratio.masked_fill((ratio > 3.0) | (ratio < 0.5), 0.0))
    assert masked[1, 1] == 0 and masked[0, 1] == 0 and masked[0, 0] == pytest.approx(math.exp(0.5))


def test_sequence_modes_use_one_ratio_per_response(logps):
    logp, sampler, mask = logps
    seq = torch.tensor([[math.exp(-0.5)], [math.exp(2.0)]])
    torch.testing.assert_close(sg.importance_weights(logp, sampler, mask, "sequence_truncate", clip_max=3.0),
                               seq.clamp(max=3.0).float())
    w = sg.importance_weights(logp, sampler, mask)               # TRL's default: sequence_mask, C_max = 3
    assert w.shape == (2, 1) and w[1, 0] == 0 and w[0, 0] == pytest.approx(math.exp(-0.5))


def test_bad_modes_are_refused(logps):
    with pytest.raises(ValueError, match="unknown importance-sampling mode"):
        sg.importance_weights(*logps, mode="token")
    with pytest.raises(ValueError, match="needs clip_min or clip_max"):
        sg.importance_weights(*logps, mode="token_truncate", clip_max=None)


def test_bandit_full_is_is_unbiased_and_ignoring_the_gap_is_not():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, generator=g, dtype=torch.float64)
    mu = z + torch.randn(12, generator=g, dtype=torch.float64)
    r = (torch.arange(12) < 3).double()
    assert sg.bandit_estimator(z, mu, r, "is")["bias"] < 1e-12
    assert sg.bandit_estimator(z, mu, r, "none")["bias"] > 0.05
    assert sg.bandit_estimator(z, z, r, "none")["bias"] < 1e-12           # no gap, nothing to correct
    capped = [sg.bandit_estimator(z, mu, r, "truncate", cap=c) for c in (1.5, 1e9)]
    assert capped[1]["bias"] < 1e-12 < capped[0]["bias"]                  # a cap that never binds is plain IS
    assert capped[0]["variance"] < capped[1]["variance"]                 # and truncating lowers the variance


def test_gap_stats_counts_clipped_tokens_and_masked_sequences(logps):
    logp, sampler, mask = logps
    s = sg.gap_stats(logp, sampler, mask, clip_eps=0.2, clip_max=3.0)
    assert s["tokens"] == 7 and s["max_abs"] == pytest.approx(2.0)
    assert s["outside_clip"] == pytest.approx(3 / 7)                      # e^.5, e^-1, e^2 leave [0.8, 1.2]
    assert s["seq_masked"] == pytest.approx(0.5) and s["seq_min"] == pytest.approx(-0.5)


def test_kl_with_sampler_is_zero_for_the_learner_itself(logps):
    logp, sampler, mask = logps
    own, other = sg.kl_with_sampler(logp, sampler, logp, mask, "k3")
    assert own == 0.0 and other > 0.0


def test_kit_copy_of_a_4bit_lora_student_matches_the_learner_and_a_stale_copy_does_not(data_dir, tokenizer):
    from kdrl_mini.models import LoraSpec, load_student
    from kdrl_mini.rollout import sample
    from kdrl_mini.sampling_copy import MergedCopy
    from kdrl_mini.tasks import files as tasks

    torch.manual_seed(0)
    tok = tokenizer
    student = load_student(data_dir / "models" / "student", "4bit", LoraSpec(r=4, alpha=8))
    rows = [dict(r) for r in tasks.load_split(data_dir, "train")][:16]
    stale = sg.stale_copies(student, tok, rows, steps=2, keep=(2,), lr=1e-3)[2]
    fresh = MergedCopy(student).model
    batch = sample(fresh, tok, [r["prompt"] for r in rows[:4]], group_size=2, max_new_tokens=12)
    student.eval()
    learner, mask = sg.score(student, batch), batch.completion_mask
    assert sg.gap_stats(learner, sg.score(fresh, batch), mask)["max_abs"] < 1e-3
    assert sg.gap_stats(learner, sg.score(stale, batch), mask)["mean_abs"] > 1e-3
    low = sg.low_precision_copy(fresh)
    assert next(low.parameters()).dtype == torch.bfloat16 and next(fresh.parameters()).dtype == torch.float32
