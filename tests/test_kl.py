import math

import pytest
import torch

from kdrl_mini.kl import entropy, exact_kl, kl_estimate, token_kl

LN2 = math.log(2.0)


# ---------------------------------------------------------------- sampled estimators: values
def test_estimators_closed_form_values():
    # d = log 0.5 - log 0.25 = ln 2, and the mirrored token with d = -ln 2
    logp = torch.tensor([math.log(0.5), math.log(0.25)], dtype=torch.float64)
    ref = torch.tensor([math.log(0.25), math.log(0.5)], dtype=torch.float64)
    k1 = kl_estimate(logp, ref, "k1")
    k2 = kl_estimate(logp, ref, "k2")
    k3 = kl_estimate(logp, ref, "k3")
    torch.testing.assert_close(k1, torch.tensor([LN2, -LN2], dtype=torch.float64))
    torch.testing.assert_close(k2, torch.tensor([0.5 * LN2**2, 0.5 * LN2**2], dtype=torch.float64))
    # k3 = exp(-d) - 1 + d
    torch.testing.assert_close(k3, torch.tensor([0.5 - 1 + LN2, 2 - 1 - LN2], dtype=torch.float64))


def test_k3_accurate_when_policies_agree():
    d = torch.tensor([1e-3, -1e-3])
    k3 = kl_estimate(d, torch.zeros(2), "k3")
    series = (d.double() ** 2 / 2 - d.double() ** 3 / 6 + d.double() ** 4 / 24).float()
    # float32 exp(-d) - 1 + d is off by ~2-5% here (cancellation); the expm1 form by ~1e-4
    torch.testing.assert_close(k3, series, rtol=1e-3, atol=0)
    assert (k3 > 0).all()


def test_estimators_differentiable_in_logp():
    logp = torch.tensor([-0.3, -1.7], requires_grad=True)
    ref = torch.tensor([-1.0, -0.2])
    d = (logp - ref).detach()
    for kind, expected in [("k1", torch.ones(2)), ("k2", d), ("k3", 1 - torch.exp(-d))]:
        (g,) = torch.autograd.grad(kl_estimate(logp, ref, kind).sum(), logp)
        torch.testing.assert_close(g, expected)


def test_unknown_estimator_names_allowed_values():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "k4")


# ---------------------------------------------------------------- exact KL
def _pq():
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    return p, q


def test_exact_kl_closed_form_both_directions():
    p, q = _pq()
    # logits need not be normalised: shift them to check softmax is applied
    logits, ref_logits = p.log() + 3.0, q.log() - 1.0
    reverse = 0.7 * math.log(0.7 / 0.2) + 0.2 * math.log(0.2 / 0.3) + 0.1 * math.log(0.1 / 0.5)
    forward = 0.2 * math.log(0.2 / 0.7) + 0.3 * math.log(0.3 / 0.2) + 0.5 * math.log(0.5 / 0.1)
    assert exact_kl(logits, ref_logits).item() == pytest.approx(reverse, rel=1e-12)
    assert exact_kl(logits, ref_logits, "forward").item() == pytest.approx(forward, rel=1e-12)
    assert abs(reverse - forward) > 0.01  # KL is not symmetric here


def test_exact_kl_shapes_and_zero_on_equal():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    assert exact_kl(logits, torch.randn(2, 3, 7)).shape == (2, 3)
    torch.testing.assert_close(exact_kl(logits, logits + 5.0), torch.zeros(2, 3), atol=1e-6, rtol=0)


def test_exact_kl_rejects_bad_arguments():
    with pytest.raises(ValueError, match="differ"):
        exact_kl(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="reverse"):
        exact_kl(torch.zeros(4), torch.zeros(4), direction="sideways")
    with pytest.raises(ValueError, match="positive"):
        exact_kl(torch.zeros(4), torch.zeros(4), top_k=0)


def test_topk_full_vocab_equals_exact():
    torch.manual_seed(1)
    logits, ref = torch.randn(3, 4, 6, dtype=torch.float64), torch.randn(3, 4, 6, dtype=torch.float64)
    for direction in ("reverse", "forward"):
        full = exact_kl(logits, ref, direction)
        torch.testing.assert_close(exact_kl(logits, ref, direction, top_k=6), full)
        torch.testing.assert_close(exact_kl(logits, ref, direction, top_k=100), full)


def test_topk_is_kl_of_renormalised_restrictions():
    torch.manual_seed(2)
    logits, ref = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    idx = logits.argsort(descending=True)[:3]
    p_s = torch.softmax(logits[idx], -1)  # p restricted to S and renormalised
    q_s = torch.softmax(ref[idx], -1)
    expected = (p_s * (p_s / q_s).log()).sum()
    got = exact_kl(logits, ref, top_k=3)
    torch.testing.assert_close(got, expected)
    assert got >= 0
    assert not torch.isclose(got, exact_kl(logits, ref))
    # a single token renormalises to probability 1 under both policies
    assert exact_kl(logits, ref, top_k=1).item() == pytest.approx(0.0, abs=1e-12)


def test_exact_kl_gradcheck():
    torch.manual_seed(3)
    logits = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    for direction in ("reverse", "forward"):
        assert torch.autograd.gradcheck(lambda a, b: exact_kl(a, b, direction), (logits, ref))
        assert torch.autograd.gradcheck(lambda a, b: exact_kl(a, b, direction, top_k=3), (logits, ref))


def test_exact_kl_with_minus_inf_logits_is_finite_with_finite_grads():
    ninf = float("-inf")
    # entry 2 masked in both; entry 3 impossible for the student only
    logits = torch.tensor([[0.0, 1.0, ninf, ninf]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[0.5, 0.0, ninf, 2.0]], dtype=torch.float64, requires_grad=True)
    rev = exact_kl(logits, ref)
    p = torch.softmax(torch.tensor([0.0, 1.0], dtype=torch.float64), -1)
    q = torch.softmax(torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64), -1)[:2]
    assert rev.item() == pytest.approx((p * (p / q).log()).sum().item(), rel=1e-12)
    rev.sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(ref.grad).all()
    # forward KL(q||p) puts teacher mass where the student has none: +inf is the true value
    assert torch.isinf(exact_kl(logits.detach(), ref.detach(), "forward")).all()
    # top-k reaching into the masked entries still renormalises over the finite ones
    top = exact_kl(logits, ref, top_k=4)
    assert torch.isfinite(top).all()
    logits.grad = None
    top.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_exact_kl_equal_masked_distributions_zero_grad():
    ninf = float("-inf")
    logits = torch.tensor([1.0, ninf, 0.0, ninf], requires_grad=True)
    exact_kl(logits, logits.detach().clone()).backward()
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad, torch.zeros(4))


# ---------------------------------------------------------------- Monte-Carlo: value bias and gradients
N_SAMPLES = 200_000
SIGMAS = 5.0  # a 5-sigma band: a false failure has probability ~1e-6 per component


def _mc_setup():
    torch.manual_seed(4)
    logits = (1.5 * torch.randn(5, dtype=torch.float64)).requires_grad_()
    ref_logits = 1.5 * torch.randn(5, dtype=torch.float64)
    log_p = torch.log_softmax(logits, -1)
    log_q = torch.log_softmax(ref_logits, -1)
    x = torch.multinomial(log_p.detach().exp(), N_SAMPLES, replacement=True)
    return logits, ref_logits, log_p, log_q, x


def test_monte_carlo_estimator_values():
    logits, ref_logits, log_p, log_q, x = _mc_setup()
    p = log_p.detach().exp()
    d_v = (log_p - log_q).detach()
    kl = exact_kl(logits.detach(), ref_logits).item()
    for kind in ("k1", "k2", "k3"):
        samples = kl_estimate(log_p.detach()[x], log_q[x], kind)
        tol = SIGMAS * samples.std().item() / math.sqrt(N_SAMPLES)
        # the estimator's exact expectation sum_v p_v k(d_v): the MC mean must land on it
        expectation = (p * kl_estimate(log_p.detach(), log_q, kind)).sum().item()
        assert samples.mean().item() == pytest.approx(expectation, abs=tol)
        if kind in ("k1", "k3"):
            assert expectation == pytest.approx(kl, rel=1e-9)
        else:
            # E[d^2/2] differs from KL by far more than the MC error: k2 is biased
            assert abs(expectation - kl) > 10 * tol
    assert (d_v.abs() > 0.1).any()


def _mc_gradient_and_tolerance(kind):
    logits, ref_logits, log_p, log_q, x = _mc_setup()
    loss = kl_estimate(log_p[x], log_q[x], kind).mean()
    (grad,) = torch.autograd.grad(loss, logits)
    # per-sample gradient wrt logits: k'(d) * (onehot(x) - p); its spread sets the MC error
    p = log_p.detach().exp()
    d = (log_p - log_q).detach()[x]
    dk = {"k1": torch.ones_like(d), "k2": d, "k3": 1 - torch.exp(-d)}[kind]
    per_sample = dk[:, None] * (torch.nn.functional.one_hot(x, 5).double() - p)
    tol = SIGMAS * per_sample.std(0) / math.sqrt(N_SAMPLES) + 1e-12
    return grad, tol, logits, ref_logits


def _exact_grad(logits, ref_logits, direction):
    (g,) = torch.autograd.grad(exact_kl(logits, ref_logits, direction), logits)
    return g


def test_monte_carlo_k2_gradient_is_reverse_kl_gradient():
    grad, tol, logits, ref = _mc_gradient_and_tolerance("k2")
    reverse, forward = _exact_grad(logits, ref, "reverse"), _exact_grad(logits, ref, "forward")
    assert ((grad - reverse).abs() <= tol).all(), (grad, reverse, tol)
    assert ((grad - forward).abs() > tol).any()  # the test can tell the two directions apart


def test_monte_carlo_k3_gradient_is_forward_kl_gradient():
    grad, tol, logits, ref = _mc_gradient_and_tolerance("k3")
    reverse, forward = _exact_grad(logits, ref, "reverse"), _exact_grad(logits, ref, "forward")
    assert ((grad - forward).abs() <= tol).all(), (grad, forward, tol)
    assert ((grad - reverse).abs() > tol).any()


def test_monte_carlo_k1_gradient_is_zero_in_expectation():
    grad, tol, logits, ref = _mc_gradient_and_tolerance("k1")
    assert (grad.abs() <= tol).all(), (grad, tol)
    assert (_exact_grad(logits, ref, "reverse").abs() > tol).any()


# ---------------------------------------------------------------- dispatcher
def test_token_kl_dispatch():
    torch.manual_seed(5)
    logits, ref = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    tokens = torch.randint(0, 6, (2, 3, 1))
    logp = torch.log_softmax(logits, -1).gather(-1, tokens).squeeze(-1)
    ref_logp = torch.log_softmax(ref, -1).gather(-1, tokens).squeeze(-1)
    for kind in ("k1", "k2", "k3"):
        torch.testing.assert_close(token_kl(kind, logp, ref_logp), kl_estimate(logp, ref_logp, kind))
    torch.testing.assert_close(token_kl("exact", logp, ref_logp, logits, ref_logits=ref), exact_kl(logits, ref))
    torch.testing.assert_close(
        token_kl("topk", logp, ref_logp, logits, ref_logits=ref, top_k=2), exact_kl(logits, ref, top_k=2)
    )


def test_token_kl_errors():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="logits"):
        token_kl("exact", z, z)
    with pytest.raises(ValueError, match="logits"):
        token_kl("topk", z, z, logits=torch.zeros(2, 3, 4), top_k=2)
    with pytest.raises(ValueError, match="top_k"):
        token_kl("topk", z, z, torch.zeros(2, 3, 4), ref_logits=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="exact"):
        token_kl("js", z, z)


# ---------------------------------------------------------------- entropy
def _entropy_reference(logits, dim=-1):
    """-sum p log p in float64 from explicit probabilities, 0 log 0 = 0."""
    p = torch.softmax(logits.double(), dim=dim)
    terms = torch.where(p > 0, -p * p.log(), torch.zeros_like(p))
    return terms.sum(dim)


def test_entropy_uniform_is_log_v_and_one_hot_is_zero():
    for V in (1, 2, 7, 1000):
        assert entropy(torch.zeros(V)).item() == pytest.approx(math.log(V), abs=1e-5)
        assert entropy(torch.full((V,), 3.7)).item() == pytest.approx(math.log(V), abs=1e-5)
    one_hot = torch.full((5,), float("-inf"))
    one_hot[2] = 0.0
    assert entropy(one_hot).item() == 0.0
    # nearly one-hot with finite logits: tiny but positive
    assert 0.0 < entropy(torch.tensor([0.0, -30.0, -30.0])).item() < 1e-11


def test_entropy_closed_form_two_outcomes():
    p = torch.tensor([0.7, 0.3])
    assert entropy(p.log()).item() == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.3)), rel=1e-6)


def test_entropy_minus_inf_entries_contribute_zero_value_and_gradient():
    logits = torch.tensor([[0.3, float("-inf"), -1.2, float("-inf")],
                           [float("-inf"), 2.0, float("-inf"), float("-inf")]], requires_grad=True)
    h = entropy(logits)
    finite = torch.tensor([0.3, -1.2])
    assert h[0].item() == pytest.approx(entropy(finite).item(), rel=1e-6)
    assert h[1].item() == 0.0
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 3] == 0 and (logits.grad[1] == 0).all()
    # the gradient on the finite entries is that of the entropy restricted to them
    ref = finite.clone().requires_grad_()
    entropy(ref).backward()
    torch.testing.assert_close(logits.grad[0, [0, 2]], ref.grad)


def test_entropy_nan_logit_gives_nan():
    assert torch.isnan(entropy(torch.tensor([0.0, float("nan"), 1.0])))


def test_entropy_matches_float64_reference_with_batch_shapes_and_dim():
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(3, 5, 11, generator=g)
    logits[0, 1, :4] = float("-inf")
    logits[2, :, 7] = float("-inf")
    h = entropy(logits)
    assert h.shape == (3, 5) and h.dtype == torch.float32
    torch.testing.assert_close(h.double(), _entropy_reference(logits), rtol=1e-5, atol=1e-6)
    assert (h >= 0).all() and (h <= math.log(11) + 1e-6).all()
    # another dim: the same numbers with the vocabulary moved to dim 1
    h1 = entropy(logits.transpose(1, 2), dim=1)
    assert h1.shape == (3, 5)
    torch.testing.assert_close(h1, h)
    # 1-D input gives a 0-dim tensor; float64 stays float64
    assert entropy(logits[1, 2]).shape == ()
    assert entropy(logits.double()).dtype == torch.float64


def test_entropy_gradcheck():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(entropy, (logits,))
