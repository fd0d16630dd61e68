import math

import pytest
import torch

from kdrl_mini.advantages import group_advantages
from kdrl_mini.kl import exact_kl, kl_estimate
from kdrl_mini.losses import (
    aggregate,
    forward_kl_loss,
    grpo_loss,
    kd_mask,
    kdrl_loss,
    one_token_surrogate,
    reverse_kl_loss,
    token_weights,
)

NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------- aggregate
VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_aggregate_hand_values():
    assert aggregate(VALUES, MASK, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(VALUES, MASK, "seq-mean").item() == pytest.approx((6 / 3 + 4 / 1) / 2)
    assert aggregate(VALUES, MASK, "seq-sum-norm").item() == pytest.approx(10 / (2 * 3))
    assert aggregate(VALUES, MASK, "seq-sum-norm", max_len=5).item() == pytest.approx(10 / (2 * 5))


def test_aggregate_ignores_padding_values():
    garbage = VALUES.clone()
    garbage[1, 1:] = torch.tensor([NAN, INF])
    for mode in ("token-mean", "seq-mean", "seq-sum-norm"):
        assert aggregate(garbage, MASK.bool(), mode).item() == aggregate(VALUES, MASK.float(), mode).item()


def test_aggregate_empty_mask_is_zero_with_zero_grad():
    v = torch.randn(2, 3, requires_grad=True)
    for mode in ("token-mean", "seq-mean", "seq-sum-norm"):
        out = aggregate(v, torch.zeros(2, 3), mode)
        assert out.item() == 0.0
        (g,) = torch.autograd.grad(out, v)
        assert torch.equal(g, torch.zeros(2, 3))


def test_seq_mean_skips_empty_sequences():
    v = torch.tensor([[1.0, 2.0], [9.0, 9.0]])
    assert aggregate(v, torch.tensor([[1, 1], [0, 0]]), "seq-mean").item() == pytest.approx(1.5)


def test_aggregate_errors():
    with pytest.raises(ValueError, match="token-mean, seq-mean, seq-sum-norm"):
        aggregate(VALUES, MASK, "mean")
    with pytest.raises(ValueError, match="max_len"):
        aggregate(VALUES, MASK, "seq-sum-norm", max_len=0)


# ---------------------------------------------------------------- grpo_loss
def test_grpo_on_policy_value_and_gradient():
    torch.manual_seed(0)
    old = -torch.rand(2, 3)
    logp = old.clone().requires_grad_()
    adv = torch.tensor([1.0, -2.0])
    loss, metrics = grpo_loss(logp, old, adv, MASK)
    # ratio = 1: L = -(3 * 1 + 1 * (-2)) / 4 ; dL/dlogp = -A / 4 on response tokens
    assert loss.item() == pytest.approx(-0.25)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, -0.25, -0.25], [0.5, 0.0, 0.0]]))
    assert metrics == {"policy_loss": pytest.approx(-0.25), "clip_frac": 0.0, "ratio_mean": pytest.approx(1.0)}


def _ratios_case():
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.1]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0]], dtype=torch.float64)
    old = torch.full_like(ratio, -1.0)
    logp = (old + ratio.log()).requires_grad_()
    return ratio, adv, old, logp


def test_grpo_clipping_stops_gradient_only_where_it_should():
    ratio, adv, old, logp = _ratios_case()
    loss, metrics = grpo_loss(logp, old, adv, torch.ones(1, 5))
    loss.backward()
    # token 0: A>0, rho>1+eps -> clipped, no grad;   token 1: A<0, rho<1-eps -> clipped, no grad
    # token 2: A>0, rho<1-eps and token 3: A<0, rho>1+eps -> unclipped branch is the minimum
    # token 4: inside the trust region.  d(-rho A / N)/dlogp = -rho A / N
    expected = -ratio * adv / 5
    expected[0, :2] = 0.0
    torch.testing.assert_close(logp.grad, expected)
    assert metrics["clip_frac"] == pytest.approx(2 / 5)
    assert metrics["ratio_mean"] == pytest.approx(ratio.mean().item())
    clipped_obj = torch.tensor([1.2, -0.8, 0.5, -1.5, 1.1], dtype=torch.float64)
    assert loss.item() == pytest.approx(-clipped_obj.mean().item())


def test_clip_eps_high_is_asymmetric():
    ratio = torch.tensor([[1.25, 0.75]])
    adv = torch.tensor([[1.0, -1.0]])
    old = torch.zeros(1, 2)
    grads = {}
    for high in (None, 0.28):
        logp = ratio.log().requires_grad_()
        grpo_loss(logp, old, adv, torch.ones(1, 2), clip_eps=0.2, clip_eps_high=high)[0].backward()
        grads[high] = logp.grad
    assert grads[None][0, 0] == 0.0  # 1.25 > 1.2: clipped
    assert grads[0.28][0, 0].item() == pytest.approx(-1.25 / 2)  # 1.25 < 1.28: still learning
    # the lower bound is untouched by clip_eps_high: 0.75 < 0.8 with A<0 stays clipped
    assert grads[None][0, 1] == 0.0 and grads[0.28][0, 1] == 0.0


def test_grpo_masked_tokens_get_zero_grad_even_with_garbage_padding():
    torch.manual_seed(1)
    logp = torch.tensor([[-0.5, -1.0, NAN], [-0.2, -INF, 3.0]], requires_grad=True)
    old = torch.tensor([[-0.4, -1.1, -INF], [-0.3, NAN, INF]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, metrics = grpo_loss(logp, old, torch.tensor([1.0, -1.0]), mask)
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in metrics.values())
    assert torch.equal(logp.grad[mask == 0], torch.zeros(3))
    assert (logp.grad[mask == 1] != 0).all()


def test_grpo_gradcheck():
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.5], [-0.7, -0.3, -2.2, -1.0]], dtype=torch.float64)
    # log-ratios inside and outside [log 0.8, log 1.2], all away from the clip boundaries
    offsets = torch.tensor([[0.05, -0.1, 0.4, -0.5], [0.1, -0.4, 0.3, 0.0]], dtype=torch.float64)
    logp = (old + offsets).requires_grad_()
    adv = torch.tensor([1.3, -0.7], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    for agg in ("token-mean", "seq-mean", "seq-sum-norm"):
        assert torch.autograd.gradcheck(lambda lp: grpo_loss(lp, old, adv, mask, loss_agg=agg)[0], (logp,))


def test_grpo_per_token_advantages_match_broadcast():
    torch.manual_seed(2)
    old = -torch.rand(2, 3)
    logp = old + 0.3 * torch.randn(2, 3)
    adv = torch.tensor([0.5, -1.5])
    a, _ = grpo_loss(logp, old, adv, MASK, loss_agg="seq-mean")
    b, _ = grpo_loss(logp, old, adv[:, None].expand(2, 3), MASK, loss_agg="seq-mean")
    assert a.item() == b.item()


# ---------------------------------------------------------------- kd_mask
REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])


def test_kd_mask_strategies_on_hand_made_rewards():
    assert torch.equal(kd_mask(REWARDS, 4, "all"), torch.ones(12))
    assert torch.equal(kd_mask(REWARDS, 4, "incorrect"), 1.0 - REWARDS)
    assert torch.equal(kd_mask(REWARDS, 4, "failed-groups"), torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4))


def test_kd_mask_threshold():
    r = torch.tensor([0.6, 0.4, 0.4, 0.4])
    assert torch.equal(kd_mask(r, 2, "incorrect", threshold=0.5), torch.tensor([0.0, 1.0, 1.0, 1.0]))
    assert torch.equal(kd_mask(r, 2, "failed-groups", threshold=0.5), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.equal(kd_mask(r, 2, "incorrect"), torch.ones(4))  # nothing reaches 1.0


def test_kd_mask_errors():
    with pytest.raises(ValueError, match="all, incorrect, failed-groups"):
        kd_mask(REWARDS, 4, "correct")
    with pytest.raises(ValueError, match="whole number of groups"):
        kd_mask(REWARDS, 5, "failed-groups")


# ---------------------------------------------------------------- KD losses
def _kd_batch(seed=3, B=3, T=4, V=6):
    torch.manual_seed(seed)
    logits = torch.randn(B, T, V, requires_grad=True)
    teacher_logits = torch.randn(B, T, V)
    tokens = torch.randint(0, V, (B, T, 1))
    logp = torch.log_softmax(logits, -1).gather(-1, tokens).squeeze(-1)
    teacher_logp = torch.log_softmax(teacher_logits, -1).gather(-1, tokens).squeeze(-1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]][:B])
    return logits, teacher_logits, logp, teacher_logp, mask


def test_reverse_kl_loss_value_weights_and_grad():
    _, _, logp, teacher_logp, mask = _kd_batch()
    logp = logp.detach().requires_grad_()
    w = torch.tensor([1.0, 0.0, 1.0])
    loss, metrics = reverse_kl_loss(logp, teacher_logp, mask, "k2", kd_weights=w)
    d = (logp - teacher_logp).detach()
    n = mask.sum()
    assert loss.item() == pytest.approx(((w[:, None] * 0.5 * d**2) * mask).sum().item() / n.item(), rel=1e-6)
    assert metrics["kl"] == pytest.approx(((0.5 * d**2) * mask).sum().item() / n.item(), rel=1e-6)
    loss.backward()
    # d/dlogp of k2 = d; response 1 is not distilled, padding never is
    torch.testing.assert_close(logp.grad, w[:, None] * d * mask / n)


def test_reverse_kl_loss_exact_kind_uses_full_distributions():
    logits, teacher_logits, logp, teacher_logp, mask = _kd_batch()
    teacher_logits.requires_grad_()
    # no sampled log-probs needed
    loss, metrics = reverse_kl_loss(None, None, mask, "exact", logits=logits, teacher_logits=teacher_logits)
    expected = (exact_kl(logits, teacher_logits) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)
    assert metrics["kl"].item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    assert teacher_logits.grad is None  # the teacher is frozen


def test_forward_kl_loss_is_nll():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, NAN, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, metrics = forward_kl_loss(logp, mask)
    assert loss.item() == pytest.approx(3.5 / 3)
    assert metrics["nll"] == pytest.approx(3.5 / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, -mask.float() / 3)


# ---------------------------------------------------------------- kdrl_loss
def _rl_batch(seed=4, dtype=torch.float32):
    torch.manual_seed(seed)
    B, T = 6, 5
    old = -torch.rand(B, T, dtype=dtype) * 2
    logp = (old + 0.3 * torch.randn(B, T, dtype=dtype)).requires_grad_()
    teacher = -torch.rand(B, T, dtype=dtype) * 2
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=dtype)
    lengths = torch.tensor([5, 3, 1, 4, 2, 5])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    return logp, old, teacher, rewards, mask


@pytest.mark.parametrize("strategy", ["all", "incorrect"])
def test_kdrl_beta_zero_is_exactly_grpo(strategy):
    logp, old, teacher, rewards, mask = _rl_batch()
    adv = group_advantages(rewards, 3)
    ref_loss, _ = grpo_loss(logp, old, adv, mask)
    (ref_grad,) = torch.autograd.grad(ref_loss, logp)
    loss, _ = kdrl_loss(logp, old, adv, mask, teacher_logp=teacher, beta=0.0, kd_weights=kd_mask(rewards, 3, strategy))
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.equal(loss, ref_loss)
    assert torch.equal(grad, ref_grad)


def test_kdrl_loss_mode_adds_weighted_kl():
    logp, old, teacher, rewards, mask = _rl_batch()
    beta, adv, w = 0.05, group_advantages(rewards, 3), kd_mask(rewards, 3, "incorrect")
    loss, metrics = kdrl_loss(logp, old, adv, mask, teacher_logp=teacher, beta=beta, kl_kind="k3", kd_weights=w)
    pg, _ = grpo_loss(logp, old, adv, mask)
    kd = (w[:, None] * kl_estimate(logp, teacher, "k3") * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, pg + beta * kd)
    g, g_ref = (torch.autograd.grad(x, logp)[0] for x in (loss, pg + beta * kd))
    torch.testing.assert_close(g, g_ref)
    assert metrics["policy_loss"].item() == pytest.approx(pg.item())
    assert metrics["kd_loss"].item() == pytest.approx(kd.item())


def test_kdrl_metrics_are_detached_tensors():
    logp, old, teacher, rewards, mask = _rl_batch()
    _, m = kdrl_loss(logp, old, group_advantages(rewards, 3), mask, teacher_logp=teacher, beta=0.01)
    assert {"policy_loss", "kd_loss", "kl", "clip_frac", "ratio_mean"} <= set(m)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in m.values())
    d = (logp - teacher).detach()
    assert m["kl"].item() == pytest.approx(((0.5 * d**2) * mask).sum().item() / 20, rel=1e-5)


def test_kdrl_exact_kl_kind_needs_only_logits():
    logits, teacher_logits, logp, teacher_logp, mask = _kd_batch(B=2)
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2)
    loss, m = kdrl_loss(logp, logp.detach(), adv, mask, teacher_logp=None, beta=0.1, kl_kind="topk", logits=logits,
                        teacher_logits=teacher_logits, top_k=3)
    expected_kd = (exact_kl(logits, teacher_logits, top_k=3) * mask).sum() / mask.sum()
    assert m["kl"].item() == pytest.approx(expected_kd.item(), rel=1e-5)
    assert loss.item() == pytest.approx(m["policy_loss"].item() + 0.1 * expected_kd.item(), rel=1e-5)
    with pytest.raises(ValueError, match="logits"):
        kdrl_loss(logp, logp.detach(), adv, mask, teacher_logp=teacher_logp, beta=0.1, kl_kind="exact")


def test_kdrl_errors():
    logp, old, teacher, rewards, mask = _rl_batch()
    with pytest.raises(ValueError, match="beta"):
        kdrl_loss(logp, old, group_advantages(rewards, 3), mask, teacher_logp=teacher, beta=-0.1)


def test_kdrl_edge_cases_finite():
    logp, old, teacher, _, mask = _rl_batch()
    adv = group_advantages(torch.ones(6), 3)
    for m in (mask, torch.zeros_like(mask)):
        for kind in ("k1", "k2", "k3"):
            loss, metrics = kdrl_loss(logp, old, adv, m, teacher_logp=teacher, beta=0.1, kl_kind=kind)
            (g,) = torch.autograd.grad(loss, logp)
            assert torch.isfinite(loss) and torch.isfinite(g).all()
            assert all(torch.isfinite(v) for v in metrics.values())
    # padding holding -inf log-probs (a masked vocabulary entry) must not leak into the loss
    pad = ~mask.bool()
    loss, _ = kdrl_loss(logp, old.masked_fill(pad, -INF), adv, mask, teacher_logp=teacher.masked_fill(pad, -INF),
                        beta=0.1)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and torch.equal(g[pad], torch.zeros(int(pad.sum())))


# ---------------------------------------------------------------- micro-batches
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean", "seq-sum-norm"])
def test_token_weights_make_micro_batches_add_up_to_the_whole(agg):
    """The loss of a rollout equals the sum of its micro-batches' losses when each uses its slice
    of the whole rollout's weights, for every aggregation; so do the gradients."""
    logp, old, teacher, rewards, mask = _rl_batch()
    adv = group_advantages(rewards, 3)
    whole, _ = kdrl_loss(logp, old, adv, mask, teacher_logp=teacher, beta=0.1, loss_agg=agg, max_len=7)
    (g_whole,) = torch.autograd.grad(whole, logp)
    w = token_weights(mask, agg, max_len=7)
    parts = [kdrl_loss(logp[s], old[s], adv[s], mask[s], teacher_logp=teacher[s], beta=0.1, loss_agg=agg,
                       weights=w[s])[0]
             for s in (slice(0, 1), slice(1, 4), slice(4, 6))]
    (g_parts,) = torch.autograd.grad(sum(parts), logp)
    torch.testing.assert_close(sum(parts), whole)
    torch.testing.assert_close(g_parts, g_whole)
    # without the shared weights a micro-batch normalises by its own tokens: a different loss
    naive = sum(kdrl_loss(logp[s], old[s], adv[s], mask[s], teacher_logp=teacher[s], beta=0.1, loss_agg=agg,
                          max_len=7)[0]
                for s in (slice(0, 1), slice(1, 4), slice(4, 6)))
    assert not torch.isclose(naive, whole)


def test_exact_kl_loss_ignores_nan_logits_at_padding_in_value_and_gradient():
    logits, teacher_logits, logp, teacher_logp, mask = _kd_batch()
    pad = ~mask.bool()
    logits = logits.detach().masked_fill(pad.unsqueeze(-1), NAN).requires_grad_()
    loss, _ = reverse_kl_loss(None, None, mask, "exact", logits=logits,
                              teacher_logits=teacher_logits.masked_fill(pad.unsqueeze(-1), NAN))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert (logits.grad[pad] == 0).all()


def test_exact_kl_with_nan_logits_is_nan_not_zero():
    z = torch.tensor([[0.0, float("nan"), 1.0]])
    assert torch.isnan(exact_kl(z, torch.zeros(1, 3))).all()


# ---------------------------------------------------------------- one_token_surrogate
@pytest.mark.parametrize("adv", [1.0, -1.0, 2.5, -0.4])
@pytest.mark.parametrize("ratio", [0.5, 0.7, 0.9, 1.0, 1.1, 1.3, 1.6])
def test_one_token_surrogate_closed_form(ratio, adv):
    eps = 0.2
    J, g, clipped = one_token_surrogate(ratio, adv, clip_eps=eps)
    clip_ratio = min(max(ratio, 1 - eps), 1 + eps)
    assert J == pytest.approx(min(ratio * adv, clip_ratio * adv), rel=1e-9)
    # the clipped branch is selected (and differs) when rho leaves the range on the side A favours
    outside = ratio > 1 + eps if adv > 0 else ratio < 1 - eps
    assert clipped is outside
    assert g == (0.0 if outside else pytest.approx(ratio * adv, rel=1e-9))


def test_one_token_surrogate_hand_values_and_signs():
    # A > 0: pushed up with weight rho inside the range, not at all above 1 + eps
    assert one_token_surrogate(0.6, 1.0) == pytest.approx((0.6, 0.6, False))
    assert one_token_surrogate(1.3, 1.0) == pytest.approx((1.2, 0.0, True))
    # A < 0: pushed down, not at all below 1 - eps; above 1 + eps the unclipped branch stays
    assert one_token_surrogate(0.7, -1.0) == pytest.approx((-0.8, 0.0, True))
    assert one_token_surrogate(1.4, -1.0) == pytest.approx((-1.4, -1.4, False))
    J, g, _ = one_token_surrogate(1.3, 1.0)
    assert math.copysign(1.0, g) == 1.0  # a clipped gradient is +0.0, not -0.0


def test_one_token_surrogate_clip_eps_high():
    # clip-higher: rho = 1.25 is inside [0.8, 1.28] for A > 0 ...
    assert one_token_surrogate(1.25, 1.0, clip_eps=0.2, clip_eps_high=0.28) == pytest.approx((1.25, 1.25, False))
    assert one_token_surrogate(1.25, 1.0, clip_eps=0.2) == pytest.approx((1.2, 0.0, True))
    # ... and the low side still uses clip_eps
    assert one_token_surrogate(0.75, -1.0, clip_eps=0.2, clip_eps_high=0.28) == pytest.approx((-0.8, 0.0, True))


def test_one_token_surrogate_rejects_non_positive_ratio():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="ratio must be positive"):
            one_token_surrogate(bad, 1.0)


def test_per_token_kl_in_the_reward_is_k2_in_the_loss_on_policy():
    """E3's identity: A_t = beta * (log pi_T - log pi_theta) through GRPO's surrogate (pi_old = pi_theta)
    has the gradient of beta * k2 in the loss, sample by sample, for any aggregation."""
    from kdrl_mini.advantages import per_token_kl_advantages

    gen = torch.Generator().manual_seed(0)
    logp0 = torch.randn(4, 6, generator=gen, dtype=torch.float64) - 2
    teacher = torch.randn(4, 6, generator=gen, dtype=torch.float64) - 2
    mask = torch.ones(4, 6)
    mask[1, 4:], mask[3, 2:] = 0, 0
    for agg in ("token-mean", "seq-mean", "seq-sum-norm"):
        a, b = logp0.clone().requires_grad_(True), logp0.clone().requires_grad_(True)
        adv = per_token_kl_advantages(torch.zeros(4, dtype=torch.float64), 0.1, teacher, a.detach(), mask)
        grpo_loss(a, a.detach(), adv, mask, loss_agg=agg)[0].backward()
        (0.1 * reverse_kl_loss(b, teacher, mask, kind="k2", loss_agg=agg)[0]).backward()
        torch.testing.assert_close(a.grad, b.grad)
