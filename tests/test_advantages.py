import math

import pytest
import torch

from kdrl_mini.advantages import group_advantages


def test_hand_computed_std_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    a = group_advantages(r, group_size=4, eps=0.0)
    # group 1: mean 1/4, sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    # group 2: mean 1/2, sample std sqrt(4 * 0.25 / 3) = 1 / sqrt(3)
    s3 = math.sqrt(3) / 2
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5, s3, s3, -s3, -s3])
    torch.testing.assert_close(a, expected)


def test_uses_sample_std_not_population_std():
    torch.manual_seed(0)
    r = torch.rand(12, dtype=torch.float64)
    a = group_advantages(r, group_size=3, eps=0.0).view(4, 3)
    # per group: mean 0 and *sample* std 1; population std would be sqrt(2/3) here
    torch.testing.assert_close(a.mean(1), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(a.std(1, unbiased=True), torch.ones(4, dtype=torch.float64))


def test_eps_in_denominator():
    r = torch.tensor([1.0, 0.0])
    # sample std of {1, 0} is 1/sqrt(2)
    a = group_advantages(r, 2, eps=0.5)
    torch.testing.assert_close(a, torch.tensor([0.5, -0.5]) / (1 / math.sqrt(2) + 0.5))


def test_scale_none_only_centres():
    r = torch.tensor([3.0, 1.0, 2.0, 10.0, 0.0, 2.0])
    torch.testing.assert_close(
        group_advantages(r, 3, scale="none"), torch.tensor([1.0, -1.0, 0.0, 6.0, -4.0, -2.0])
    )


@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, 0.3, 1e7 + 0.1])
@pytest.mark.parametrize("scale", ["std", "none"])
def test_all_equal_group_gives_exact_zeros(value, scale):
    r = torch.tensor([value] * 3 + [1.0, 0.0, 0.0])
    a = group_advantages(r, 3, scale=scale)
    assert torch.equal(a[:3], torch.zeros(3))
    assert torch.isfinite(a).all() and (a[3:] != 0).all()


def test_integer_rewards_accepted():
    a = group_advantages(torch.tensor([1, 0, 1, 1]), 2)
    assert a.is_floating_point()
    assert a[0] > 0 > a[1] and a[2] == a[3] == 0


def test_invalid_inputs():
    with pytest.raises(ValueError, match="whole number of groups"):
        group_advantages(torch.zeros(7), 2)
    with pytest.raises(ValueError, match=">= 2"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match=">= 2"):
        group_advantages(torch.zeros(4), 2.0)
    with pytest.raises(ValueError, match="std, none"):
        group_advantages(torch.zeros(4), 2, scale="max")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)


# ---------------------------------------------------------------- KL folded into the reward
def test_group_size_accepts_numpy_and_torch_integers_not_floats():
    import numpy as np

    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    ref = group_advantages(r, 2)
    assert torch.equal(group_advantages(r, np.int64(2)), ref)
    assert torch.equal(group_advantages(r, torch.tensor(2)), ref)
    for bad in (2.0, True, "2"):
        with pytest.raises(ValueError, match="integer"):
            group_advantages(r, bad)


def test_per_token_kl_advantages_hand_computed():
    from kdrl_mini.advantages import per_token_kl_advantages

    adv = torch.tensor([0.5, -0.5])
    teacher = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, -1.0, -9.0]])
    old = torch.tensor([[-1.0, -1.0, 0.0], [-1.0, -3.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    out = per_token_kl_advantages(adv, 0.1, teacher, old, mask=mask, kd_weights=torch.tensor([1.0, 0.0]))
    # response 0: 0.5 + 0.1 * (log pi_T - log pi_old) = [0.4, 0.5]; response 1 is not distilled
    torch.testing.assert_close(out, torch.tensor([[0.4, 0.5, 0.0], [-0.5, -0.5, 0.0]]))


def test_sequence_kl_rewards_beta_cancels_in_an_all_wrong_group():
    """The documented flaw of the sequence-sum variant: with std scaling, inside a group whose
    raw rewards are all equal, the advantages do not depend on beta at all."""
    from kdrl_mini.advantages import sequence_kl_rewards

    teacher = torch.tensor([[-2.0, -1.0], [-1.0, -1.0], [-0.5, -3.0]])
    old = torch.full((3, 2), -1.0)
    mask, r = torch.ones(3, 2), torch.zeros(3)
    small = group_advantages(sequence_kl_rewards(r, 0.01, teacher, old, mask=mask), 3)
    large = group_advantages(sequence_kl_rewards(r, 1.0, teacher, old, mask=mask), 3)
    torch.testing.assert_close(small, large, rtol=1e-3, atol=1e-3)
    assert small.abs().max() > 0.5  # and the KL term acts at full strength


def test_informative_groups_marks_groups_with_any_reward_spread():
    from kdrl_mini.advantages import informative_groups

    r = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0.5, 0, 0, 0])
    assert informative_groups(r, 4).tolist() == [True] * 4 + [False] * 8 + [True] * 4
