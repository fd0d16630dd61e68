"""Hinton's soft targets: the T^2 factor keeps the gradient's scale, and the high-T limit is logit matching."""

import pytest
import torch

from kdrl_mini.lessons import soft_targets as st


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 7, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)


def test_gradient_is_softened_difference_over_t(logits):
    z, v = logits
    for T in (1.0, 2.5):
        expected = (torch.softmax(z / T, -1) - torch.softmax(v / T, -1)) / T
        torch.testing.assert_close(st.temperature_gradient(z, v, T, scale=False), expected)
        torch.testing.assert_close(st.temperature_gradient(z, v, T), expected * T ** 2)


def test_unscaled_gradient_shrinks_like_one_over_t_squared_and_scaled_one_does_not(logits):
    z, v = logits
    unscaled = [st.temperature_gradient(z, v, T, scale=False).norm().item() for T in (20.0, 40.0)]
    scaled = [st.temperature_gradient(z, v, T).norm().item() for T in (20.0, 40.0)]
    assert unscaled[0] / unscaled[1] == pytest.approx(4.0, rel=0.02)
    assert scaled[0] / scaled[1] == pytest.approx(1.0, rel=0.02)


def test_high_temperature_limit_is_logit_matching(logits):
    z, v = logits
    far = st.temperature_gradient(z, v, 1000.0)
    torch.testing.assert_close(far, st.logit_matching_gradient(z, v), rtol=1e-2, atol=1e-4)
    assert (st.temperature_gradient(z, v, 1.0) - st.logit_matching_gradient(z, v)).norm() > 0.05


def test_loss_is_zero_when_student_equals_teacher_and_rejects_bad_temperature(logits):
    z, _ = logits
    assert st.soft_target_loss(z, z, 3.0).abs().item() < 1e-12
    with pytest.raises(ValueError, match="temperature must be positive"):
        st.soft_target_loss(z, z, 0.0)
