import pytest
import torch

from kdrl_mini.lessons import sequence_kl as sk
from kdrl_mini.kl import exact_kl

V, T = 3, 4
Z_BOUND = 4.5  # |z| of an unbiased estimator; a seeded N(0, 1) draw beyond 4.5 has odds ~1e-5


@pytest.fixture(scope="module")
def pair():
    """Student and teacher whose logits depend on the whole prefix."""
    return sk.random_table(V, T, seed=0), sk.random_table(V, T, seed=1)


@pytest.fixture(scope="module")
def exact_parts(pair):
    student, teacher = pair
    token, future = sk.gradient_parts(student, teacher)
    return sk.sequence_kl_grad(student, teacher), token, future


def _z_along(pair, exact_parts, kind, target=None, n=50, repeats=200):
    """z of the mean gradient against ``target`` (default: the exact gradient g*), along g*, its
    token part and its future part."""
    grads = sk.sampled_grads(*pair, kind, n, repeats, seed=0)
    target = exact_parts[0] if target is None else target
    return [sk.projected_z(grads, target, u) for u in exact_parts]


def reward_to_come_loss(student, teacher, y):
    """A deliberate mistake: weight token t by the log-ratios *up to* t instead of from t on."""
    logp = sk.token_logprobs(student, y)
    d = (logp - sk.token_logprobs(teacher, y)).detach()
    return (logp * d.cumsum(-1)).sum(-1)


def future_only_loss(student, teacher, y):
    """A deliberate mistake: reward-to-go that skips the token's own log-ratio (s > t)."""
    logp = sk.token_logprobs(student, y)
    d = (logp - sk.token_logprobs(teacher, y)).detach()
    return (logp * (sk.reward_to_go(d) - d)).sum(-1)


# ---------------------------------------------------------------- the tabular policy
def test_prefix_rows_cover_every_row_once_per_step():
    y = sk.all_sequences(V, T)
    rows = sk.prefix_rows(y, V)
    assert rows.shape == (V**T, T)
    assert sorted(rows.unique().tolist()) == list(range(sk.num_rows(V, T)))
    assert (rows[:, 0] == 0).all()
    # two sequences share the row at step t exactly when they share the prefix y_<t
    for t in range(T):
        same_prefix = (y[:, None, :t] == y[None, :, :t]).all(-1)
        assert torch.equal(rows[:, None, t] == rows[None, :, t], same_prefix)


def test_table_length_and_bad_tables():
    assert sk.table_length(sk.random_table(4, 3)) == 3
    with pytest.raises(ValueError, match="prefix table"):
        sk.table_length(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="prefix table"):
        sk.table_length(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="differ"):
        sk.enumerate_sequences(sk.random_table(3, 2), sk.random_table(3, 3))
    with pytest.raises(ValueError, match="unknown estimator"):
        sk.estimator_grad(*[sk.random_table(3, 2)] * 2, "k4", n=4)


def test_sampling_matches_enumerated_probabilities(pair):
    student, teacher = pair
    y_all, logp, _ = sk.enumerate_sequences(student, teacher)
    n = 40_000
    y = sk.sample_sequences(student, n, seed=3)
    codes = (y * V ** torch.arange(T - 1, -1, -1)).sum(-1)   # all_sequences lists them in this order
    freq = torch.bincount(codes, minlength=V**T).double() / n
    p = logp.exp().detach()
    z = (freq - p) / (p * (1 - p) / n).sqrt()
    assert z.abs().max() < Z_BOUND
    assert torch.equal(sk.sample_sequences(student, 8, seed=3), sk.sample_sequences(student, 8, seed=3))
    assert not torch.equal(sk.sample_sequences(student, 8, seed=3), sk.sample_sequences(student, 8, seed=4))


# ---------------------------------------------------------------- exact quantities
def test_enumeration_is_a_distribution(pair):
    y, logp, logq = sk.enumerate_sequences(*pair)
    assert y.shape == (V**T, T) and len(set(map(tuple, y.tolist()))) == V**T
    torch.testing.assert_close(logp.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(logq.exp().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_sequence_kl_nonnegative_and_zero_on_equal(pair):
    student, teacher = pair
    assert sk.sequence_kl(student, teacher) > 0.1
    assert sk.sequence_kl(student, student + 2.0).abs() < 1e-12      # softmax ignores a shift
    assert sk.sequence_kl_grad(student, student).abs().max() < 1e-12
    for seed in range(5):
        assert sk.sequence_kl(sk.random_table(2, 3, 3.0, seed), sk.random_table(2, 3, 3.0, seed + 9)) >= 0


def test_sequence_kl_is_sum_of_token_kls_along_prefixes(pair):
    y, logp, _ = sk.enumerate_sequences(*pair)
    along = (logp.exp() * sk.token_kls(*pair, y).sum(-1)).sum()
    torch.testing.assert_close(along, sk.sequence_kl(*pair))


def test_exact_gradient_matches_finite_differences(pair):
    student, teacher = pair
    g = sk.sequence_kl_grad(student, teacher)
    for row, col in [(0, 0), (2, 1), (sk.num_rows(V, T) - 1, 2)]:
        e = torch.zeros_like(student)
        e[row, col] = 1e-6
        fd = (sk.sequence_kl(student + e, teacher) - sk.sequence_kl(student - e, teacher)) / 2e-6
        assert float(fd) == pytest.approx(float(g[row, col]), abs=1e-8)


# ---------------------------------------------------------------- expected gradients, exactly
def test_expected_gradients_by_enumeration(pair, exact_parts):
    exact, token, future = exact_parts
    assert future.norm() > 0.3 * exact.norm()                        # prefixes matter here
    for kind in sk.UNBIASED:
        torch.testing.assert_close(sk.expected_grad(*pair, kind), exact)
    for kind in ("k2", "exact"):
        torch.testing.assert_close(sk.expected_grad(*pair, kind), token)
    assert sk.expected_grad(*pair, "k1").abs().max() < 1e-12
    torch.testing.assert_close(sk.expected_grad(*pair, future_only_loss), future)


def test_k2_plus_future_is_reward_to_go_sample_by_sample(pair):
    # same seed, same 16 sequences: the identity holds batch by batch, not only in expectation
    k2 = sk.estimator_grad(*pair, "k2", 16, seed=1)
    fut = sk.estimator_grad(*pair, future_only_loss, 16, seed=1)
    torch.testing.assert_close(k2 + fut, sk.estimator_grad(*pair, "rtg", 16, seed=1))


def test_k2_unbiased_when_T_is_1():
    student, teacher = sk.random_table(4, 1, seed=0), sk.random_table(4, 1, seed=1)
    exact = sk.sequence_kl_grad(student, teacher)
    torch.testing.assert_close(sk.expected_grad(student, teacher, "k2"), exact)
    # and it is the single-categorical gradient of notebook 03
    z = student[0].clone().requires_grad_(True)
    exact_kl(z, teacher[0]).backward()
    torch.testing.assert_close(exact[0], z.grad)


def test_k2_unbiased_when_logits_ignore_the_prefix():
    gen = torch.Generator().manual_seed(0)
    student = sk.prefix_free_table(torch.randn(T, V, generator=gen))
    teacher = sk.prefix_free_table(torch.randn(T, V, generator=gen))
    _, future = sk.gradient_parts(student, teacher)
    assert future.abs().max() < 1e-12
    torch.testing.assert_close(sk.expected_grad(student, teacher, "k2"), sk.sequence_kl_grad(student, teacher))


# ---------------------------------------------------------------- Monte Carlo
@pytest.mark.parametrize("kind", sk.UNBIASED)
def test_unbiased_estimators_within_monte_carlo_error(pair, exact_parts, kind):
    assert max(abs(z) for z in _z_along(pair, exact_parts, kind)) < Z_BOUND


def test_k2_bias_is_many_standard_errors(pair, exact_parts):
    # against the sequence gradient: off by many standard errors, most along the future part
    z_exact, _, z_future = _z_along(pair, exact_parts, "k2")
    assert abs(z_exact) > 3 * Z_BOUND and abs(z_future) > 10 * Z_BOUND
    # against the token part alone: within noise in every direction
    token = exact_parts[1]
    assert max(abs(z) for z in _z_along(pair, exact_parts, "k2", target=token)) < Z_BOUND


@pytest.mark.parametrize("wrong", [reward_to_come_loss, future_only_loss])
def test_the_z_test_catches_a_wrong_reward_to_go(pair, exact_parts, wrong):
    assert max(abs(z) for z in _z_along(pair, exact_parts, wrong)) > 3 * Z_BOUND


def test_moments_and_stats_agree(pair):
    for kind in ("k2", "rtg"):
        moments = sk.exact_moments(*pair, kind)
        stats = sk.gradient_stats(*pair, kind, n=32, repeats=100)
        # relative variance of one batch is variance(1 sequence) / n, up to ~15% sampling error
        assert stats["variance"] == pytest.approx(moments["variance"] / 32, rel=0.2)
        assert stats["bias"] == pytest.approx(moments["bias"], abs=3 * stats["bias_se"])
    # Rao-Blackwellising the sampled d_s into exact KLs lowers the variance, bias stays 0
    assert sk.exact_moments(*pair, "rtg_exact")["variance"] < sk.exact_moments(*pair, "rtg")["variance"]
    assert sk.exact_moments(*pair, "rtg")["variance"] < sk.exact_moments(*pair, "return")["variance"]
