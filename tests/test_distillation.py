"""The prefix x direction grid on an enumerable policy (kdrl_mini.lessons.distillation), the
discounted reward-to-go of sequence_kl, and GRPO's expected gradient on one-token policies."""

import math

import pytest
import torch

from kdrl_mini.lessons import distillation as D
from kdrl_mini.lessons import grpo_bandit as gb
from kdrl_mini.lessons import sequence_kl as sk

V, T = 3, 3


@pytest.fixture
def pair():
    teacher, reward = D.two_mode_teacher(V, T, [(0, 1, 2), (2, 1, 0)], mass=0.8)
    return D.markov_table(D.random_markov(V, T, seed=0)), teacher, reward


def test_markov_table_shares_rows_between_prefixes_with_the_same_last_token():
    table = D.markov_table(D.random_markov(V, T, seed=0))
    assert table.shape == (sk.num_rows(V, T), V)
    rows = sk.prefix_rows(torch.tensor([[0, 1, 0], [2, 1, 0]]), V)   # step 2 after "0 1" and after "2 1"
    torch.testing.assert_close(table[rows[0, 2]], table[rows[1, 2]])
    assert not torch.equal(table[rows[0, 1]], table[rows[1, 1]])      # step 1 after "0" and after "2"


def test_table_from_sequence_probs_gives_the_probabilities_back():
    probs = torch.rand(V**T, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.01
    table = D.table_from_sequence_probs(probs, V, T)
    _, logp, _ = sk.enumerate_sequences(table, table)
    torch.testing.assert_close(logp.exp(), probs / probs.sum())
    with pytest.raises(ValueError, match="positive"):
        D.table_from_sequence_probs(torch.zeros(V**T), V, T)


def test_two_mode_teacher_accuracy_is_its_mass_on_the_modes(pair):
    _, teacher, reward = pair
    assert reward.sum() == 2
    assert D.report(teacher, teacher, reward)["accuracy"] == pytest.approx(0.8 + 0.2 * 2 / V**T)


def test_jsd_closed_form_and_bounds():
    p, q = torch.tensor([0.7, 0.2, 0.1]).double(), torch.tensor([0.1, 0.3, 0.6]).double()
    m = 0.5 * (p + q)
    jsd = 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()
    assert float(D.token_divergence(p.log(), q.log(), "jsd")) == pytest.approx(float(jsd))
    assert float(D.token_divergence(p.log(), p.log(), "jsd", 0.3)) == pytest.approx(0.0, abs=1e-12)
    far = D.token_divergence(torch.tensor([30.0, 0, 0]).double(), torch.tensor([0, 30.0, 0]).double(), "jsd", 0.3)
    assert 0 < float(far) <= -(0.3 * math.log(0.3) + 0.7 * math.log(0.7)) + 1e-9
    small = lambda b: float(D.token_divergence(p.log(), q.log(), "jsd", b))  # noqa: E731
    fwd, rev = float(D.token_divergence(p.log(), q.log(), "forward")), float(D.token_divergence(p.log(), q.log(), "reverse"))
    assert small(1e-4) / 1e-4 == pytest.approx(fwd, rel=1e-2)          # GKD: beta -> 0 is the forward KL
    assert small(1 - 1e-4) / 1e-4 == pytest.approx(rev, rel=1e-2)      # beta -> 1 the reverse KL
    with pytest.raises(ValueError, match="jsd_beta"):
        D.token_divergence(p.log(), q.log(), "jsd", 0.0)


def test_sft_corner_is_the_sequence_forward_kl(pair):
    # teacher prefixes + forward KL: the gradient of KL(q || p) between whole sequences, exactly
    student, teacher, _ = pair
    def seq_forward(theta):
        _, logp, logq = sk.enumerate_sequences(theta, teacher)
        return (logq.exp() * (logq - logp)).sum()
    g_seq = sk._grad(seq_forward, student)
    g_sft = sk._grad(lambda th: D.token_distillation_loss(th, teacher, "forward", 0.0), student)
    torch.testing.assert_close(g_sft, g_seq)


def test_opd_corner_is_the_token_part_of_the_sequence_reverse_kl(pair):
    student, teacher, _ = pair
    token, _ = sk.gradient_parts(student, teacher)
    torch.testing.assert_close(sk._grad(lambda th: D.token_distillation_loss(th, teacher, "reverse", 1.0), student),
                               token)


def test_gkd_mix_is_linear_in_the_share_of_student_prefixes(pair):
    student, teacher, _ = pair
    loss = lambda lam: float(D.token_distillation_loss(student, teacher, "reverse", lam))  # noqa: E731
    assert loss(0.3) == pytest.approx(0.3 * loss(1.0) + 0.7 * loss(0.0))
    with pytest.raises(ValueError, match="on_policy"):
        loss(1.5)


def test_grid_training_is_deterministic_and_a_full_table_reaches_the_teacher(pair):
    student, teacher, reward = pair
    params = D.random_markov(V, T, seed=1)
    a = D.train(params, teacher, reward, D.objective("opd"), steps=20, every=10)
    b = D.train(params, teacher, reward, D.objective("opd"), steps=20, every=10)
    assert a["history"] == b["history"] and [h["step"] for h in a["history"]] == [0, 10, 20]
    full = D.train(sk.random_table(V, T, seed=2), teacher, reward, D.objective("opd"), steps=400, lr=0.1,
                   table=lambda x: x)
    assert full["history"][-1]["reverse_kl"] < 1e-3 < full["history"][0]["reverse_kl"]
    with pytest.raises(ValueError, match="unknown objective"):
        D.objective("dpo")


def test_sequence_reverse_kl_seeks_a_mode_that_per_token_opd_does_not():
    teacher, reward = D.two_mode_teacher(4, 4, [(0, 1, 2, 3), (3, 1, 0, 0)], mass=0.9)
    init = D.random_markov(4, 4, seed=0)
    end = {k: D.train(init, teacher, reward, D.objective(k), steps=150, every=150)["history"][-1]
           for k in ("opd", "sequence-rkl")}
    assert end["sequence-rkl"]["accuracy"] > 0.8 > 0.5 > end["opd"]["accuracy"]
    assert end["sequence-rkl"]["entropy"] < D.report(teacher, teacher, reward)["entropy"] < end["opd"]["entropy"]


def test_discounted_reward_to_go_interpolates_k2_and_reward_to_go():
    student, teacher = sk.random_table(3, 3, seed=0), sk.random_table(3, 3, seed=1)
    y = sk.sample_sequences(student, 8, seed=0)
    per_seq = lambda f: torch.autograd.functional.jacobian(lambda t: f(t, teacher, y), student)  # noqa: E731
    torch.testing.assert_close(per_seq(D.discounted_reward_to_go_loss(0.0)), per_seq(sk.ESTIMATORS["k2"]))
    torch.testing.assert_close(per_seq(D.discounted_reward_to_go_loss(1.0)), per_seq(sk.reward_to_go_loss))
    bias = [sk.exact_moments(student, teacher, D.discounted_reward_to_go_loss(g))["bias"] for g in (0, 0.5, 0.9, 1)]
    assert bias == sorted(bias, reverse=True) and bias[-1] < 1e-12
    with pytest.raises(ValueError, match="gamma"):
        D.discounted_reward_to_go_loss(1.5)


def test_group_mean_baseline_scales_the_expected_gradient_by_g_minus_1_over_g():
    logits = torch.tensor([[-1.5, 0.5, 0.0], [1.0, 0.5, 0.0]], dtype=torch.float64)
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    for G in (2, 4, 6):
        torch.testing.assert_close(gb.expected_group_gradient(logits, rewards, G, "none"),
                                   (G - 1) / G * gb.true_gradient(logits, rewards))
    out = gb.compare(logits, rewards, 4)
    assert out["none"]["factors"] == pytest.approx([0.75, 0.75])
    assert abs(out["std"]["factors"][0] - out["std"]["factors"][1]) > 0.01   # std reweights prompts


def test_expected_group_gradient_matches_monte_carlo():
    z, r, G = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0]), 4
    from kdrl_mini.advantages import group_advantages
    gen = torch.Generator().manual_seed(0)
    n = 20000
    o = torch.multinomial(torch.softmax(z, -1).expand(n, 3), G, replacement=True, generator=gen)
    theta = z.clone().requires_grad_(True)
    adv = group_advantages(r[o].reshape(-1), G, "std").view(n, G)
    (adv * torch.log_softmax(theta, -1)[o]).mean(-1).mean().backward()
    exact = gb.expected_group_gradient(z, r, G, "std")
    assert (theta.grad - exact).norm() < 0.05 * exact.norm()


def test_k3_in_the_loss_is_the_per_token_forward_kl_on_student_prefixes():
    student, teacher = sk.random_table(3, 3, seed=0), sk.random_table(3, 3, seed=1)
    own, sequence = D.forward_kl_grads(student, teacher)
    torch.testing.assert_close(sk.expected_grad(student, teacher, "k3"), own)
    assert (own - sequence).norm() > 0.1 * sequence.norm()
