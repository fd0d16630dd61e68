r"""Per-token versus sequence-level reverse KL gradients, on a policy small enough to enumerate.

A response y = (y_1 .. y_T) is sampled token by token from the student p_theta and scored by the teacher
q. KDRL's KL is over whole responses; it decomposes into per-token KLs along the student's prefixes:

    KL(p_theta || q) = \sum_y p_theta(y) \log p_theta(y) / q(y)
                     = E_{y ~ p_theta}[ \sum_t KL_t(y_{<t}) ],   KL_t(h) = KL(p_theta(.|h) || q(.|h)).

Its gradient has two parts (d_s = \log p_theta(y_s|y_{<s}) - \log q(y_s|y_{<s})):

    \nabla KL = E[ \sum_t \nabla KL_t(y_{<t}) ]                                  token part
              + E[ \sum_t \nabla \log p_theta(y_t|y_{<t}) \sum_{s>t} d_s ]          future part

The token part treats each prefix as fixed (what k2 in the loss gives); the future part is how a token
changes the KL of the tokens after it (Tang & Munos 2025, arXiv 2506.09477).

The policy is a table of logits, one row per prefix, so every sequence can be listed: the exact KL,
its gradient and each estimator's *expected* gradient come from autograd, besides Monte Carlo.
Shapes: table [P, V] with P = 1 + V + ... + V^{T-1} rows, sequences y [N, T] (long), per-token
values [N, T], per-sequence values [N]. Float64 throughout.
"""

import torch

from ..kl import exact_kl, kl_estimate


# ---------------------------------------------------------------- the tabular policy
def num_rows(vocab: int, length: int) -> int:
    """Rows of the logit table: one per prefix of length 0 .. T-1, i.e. 1 + V + ... + V^{T-1}."""
    return sum(vocab**t for t in range(length))


def table_length(table: torch.Tensor) -> int:
    """Sequence length T of a [P, V] table, read off its number of rows."""
    vocab, rows, length = table.shape[1], 0, 0
    while vocab >= 2 and rows < table.shape[0]:
        rows, length = rows + vocab**length, length + 1
    if vocab < 2 or rows != table.shape[0]:
        raise ValueError(
            f"a table with {table.shape[0]} rows and vocabulary {vocab} is not a prefix table: "
            "it needs V >= 2 and 1 + V + ... + V^(T-1) rows; build it with random_table"
        )
    return length


def random_table(vocab: int, length: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """A random policy: logits ~ N(0, scale^2), independent for every prefix. [P, V], float64."""
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(num_rows(vocab, length), vocab, generator=gen, dtype=torch.float64)


def prefix_free_table(step_logits: torch.Tensor) -> torch.Tensor:
    """A table whose logits depend on the step t only, not on the earlier tokens.

    step_logits [T, V] -> table [P, V] (row t copied to every prefix of length t)."""
    length, vocab = step_logits.shape
    return torch.cat([step_logits[t].expand(vocab**t, vocab) for t in range(length)]).double()


def prefix_rows(y: torch.Tensor, vocab: int) -> torch.Tensor:
    """Row of the table read at each step: [N, T] from y [N, T].

    Step t reads row offset_t + code(y_{<t}): offset_t = 1 + V + ... + V^{t-1} skips the rows of
    shorter prefixes, and code is the prefix written as a base-V number."""
    rows = torch.empty_like(y)
    code, offset = torch.zeros_like(y[:, 0]), 0
    for t in range(y.shape[1]):
        rows[:, t] = offset + code
        code, offset = code * vocab + y[:, t], offset + vocab**t
    return rows


def step_logits(table: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logits of p(. | y_{<t}) at every step: [N, T, V]. Differentiable in ``table``."""
    return table[prefix_rows(y, table.shape[1])]


def token_logprobs(table: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""\log p(y_t | y_{<t}) of the tokens in y: [N, T]."""
    logp = torch.log_softmax(step_logits(table, y), dim=-1)
    return logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)


def sample_sequences(table: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n sequences drawn token by token from the table's policy (seeded): [n, T] long. The row at
    step t depends on y_{<t} only, so the zeros still ahead of t do not matter."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.zeros(n, table_length(table), dtype=torch.long)
    for t in range(y.shape[1]):
        probs = torch.softmax(table.detach()[prefix_rows(y, table.shape[1])[:, t]], dim=-1)
        y[:, t] = torch.multinomial(probs, 1, generator=gen)[:, 0]
    return y


# ---------------------------------------------------------------- exact quantities
def all_sequences(vocab: int, length: int) -> torch.Tensor:
    """Every sequence of ``length`` tokens from a vocabulary of ``vocab``: [V^T, T] long."""
    return torch.cartesian_prod(*[torch.arange(vocab)] * length).reshape(vocab**length, length)


def enumerate_sequences(student: torch.Tensor, teacher: torch.Tensor):
    r"""All sequences with their exact log-probabilities under both policies.

        \log p(y) = \sum_t \log p(y_t | y_{<t})        (same for q)

    Returns (y [V^T, T], logp [V^T], logq [V^T]); logp is differentiable in ``student``."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student table {tuple(student.shape)} and teacher table {tuple(teacher.shape)} differ: "
            "both must cover the same vocabulary and length"
        )
    y = all_sequences(student.shape[1], table_length(student))
    return y, token_logprobs(student, y).sum(-1), token_logprobs(teacher, y).sum(-1)


def sequence_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    r"""Exact sequence-level reverse KL, KL(p || q) = \sum_y p(y) (\log p(y) - \log q(y)). 0-dim."""
    _, logp, logq = enumerate_sequences(student, teacher)
    return (logp.exp() * (logp - logq)).sum()


def token_kls(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Exact per-token KL_t(y_{<t}) = \sum_v p(v|y_{<t}) \log p(v|y_{<t}) / q(v|y_{<t}): [N, T]."""
    return exact_kl(step_logits(student, y), step_logits(teacher, y))


def _grad(loss_fn, student: torch.Tensor) -> torch.Tensor:
    """d loss_fn(theta) / d theta at theta = student, in float64: [P, V]."""
    theta = student.detach().double().requires_grad_(True)
    loss_fn(theta).backward()
    return theta.grad


def sequence_kl_grad(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    r"""Exact \nabla_\theta KL(p_\theta || q) by autograd through the enumeration: [P, V]."""
    return _grad(lambda theta: sequence_kl(theta, teacher.double()), student)


def gradient_parts(student: torch.Tensor, teacher: torch.Tensor):
    r"""Split the exact gradient into its token part and its future part, both [P, V].

        token  = \sum_y sg[p(y)] \sum_t \nabla KL_t(y_{<t})   (prefix probabilities held fixed)
        future = \nabla KL(p || q) - token

    token + future is the exact gradient; k2 in the loss targets ``token`` only."""
    y = all_sequences(student.shape[1], table_length(student))
    weight = token_logprobs(student.double(), y).sum(-1).exp().detach()
    token = _grad(lambda theta: (weight * token_kls(theta, teacher.double(), y).sum(-1)).sum(), student)
    return token, sequence_kl_grad(student, teacher) - token


# ---------------------------------------------------------------- estimators (surrogate losses)
# Each maps (student, teacher, y) to a surrogate loss [N]: its gradient, y fixed, estimates \nabla KL(p || q).
def reward_to_go(d: torch.Tensor) -> torch.Tensor:
    r"""G_t = \sum_{s >= t} d_s along the last dim: [N, T] -> [N, T]."""
    return d.flip(-1).cumsum(-1).flip(-1)


def per_token_loss(student, teacher, y, kind: str = "k2") -> torch.Tensor:
    r"""KL in the loss, summed over the sequence: L(y) = \sum_t k(d_t), or \sum_t KL_t(y_{<t}).

    kind "k1", "k2", "k3": Schulman's estimators of :func:`kdrl_mini.kl.kl_estimate`;
    kind "exact": the full per-token KL over the vocabulary (the kit's kl_kind="exact").

    Expected gradient: k2 and "exact" give the token part only, so they are BIASED for the
    sequence gradient whenever a token changes the KL of later tokens (unbiased when T = 1 or
    the logits ignore the prefix); k1 gives 0; k3 gives per-token *forward* KL gradients.
    A per-token reward -d_t with no later terms (on-policy) has k2's gradient, sample by sample:
    \nabla d_t^2 / 2 = d_t \nabla \log p(y_t|y_{<t})."""
    if kind == "exact":
        return token_kls(student, teacher, y).sum(-1)
    return kl_estimate(token_logprobs(student, y), token_logprobs(teacher, y).detach(), kind).sum(-1)


def reward_to_go_loss(student, teacher, y) -> torch.Tensor:
    r"""KL in the reward with reward-to-go: L(y) = \sum_t \log p(y_t|y_{<t}) sg[\sum_{s>=t} d_s].

    The score-function gradient of the sequence KL, each token weighted by the log-ratios from itself
    on: UNBIASED. It is k2 in the loss (s = t: \nabla d_t^2 / 2 = d_t \nabla \log p) plus the future part."""
    logp = token_logprobs(student, y)
    d = (logp - token_logprobs(teacher, y)).detach()
    return (logp * reward_to_go(d)).sum(-1)


def whole_return_loss(student, teacher, y) -> torch.Tensor:
    r"""KL in the reward as one sequence return: L(y) = \log p(y) sg[\sum_s d_s].

    \sum_s d_s = \log p(y)/q(y) is the k1 estimate of the sequence KL; beta times it off each reward is
    kl_mode="reward-seq". UNBIASED (terms s < t average to 0 given the prefix), noisier than reward-to-go."""
    logp = token_logprobs(student, y)
    d = (logp - token_logprobs(teacher, y)).detach()
    return logp.sum(-1) * d.sum(-1)


def analytic_reward_to_go_loss(student, teacher, y) -> torch.Tensor:
    r"""Exact per-token KL in the loss plus the future part, with exact KLs as the future reward:

        L(y) = \sum_t KL_t(y_{<t}) + \sum_t \log p(y_t|y_{<t}) sg[\sum_{s>t} KL_s(y_{<s})]

    UNBIASED, and quieter than :func:`reward_to_go_loss`: each sampled d_s is replaced by its
    mean over the token, KL_s (needs full logits, like kl_kind="exact")."""
    kl_t = token_kls(student, teacher, y)
    future = (reward_to_go(kl_t) - kl_t).detach()
    return kl_t.sum(-1) + (token_logprobs(student, y) * future).sum(-1)


ESTIMATORS = {
    "k1": lambda s, q, y: per_token_loss(s, q, y, "k1"),
    "k2": lambda s, q, y: per_token_loss(s, q, y, "k2"),
    "k3": lambda s, q, y: per_token_loss(s, q, y, "k3"),
    "exact": lambda s, q, y: per_token_loss(s, q, y, "exact"),
    "return": whole_return_loss,
    "rtg": reward_to_go_loss,
    "rtg_exact": analytic_reward_to_go_loss,
}
UNBIASED = ("return", "rtg", "rtg_exact")


def _surrogate(kind):
    if callable(kind):
        return kind
    if kind not in ESTIMATORS:
        raise ValueError(f"unknown estimator {kind!r}: choose one of {', '.join(ESTIMATORS)} or pass a function")
    return ESTIMATORS[kind]


def estimator_grad(student, teacher, kind, n: int, seed: int = 0) -> torch.Tensor:
    r"""Monte-Carlo gradient from n sampled sequences, held fixed as in a trainer: [P, V].

        \hat g = \nabla_\theta \frac{1}{n} \sum_i L(y_i),   y_i ~ p_\theta (seeded)

    ``kind``: a name in ESTIMATORS, or a function (student, teacher, y) -> [N]."""
    y = sample_sequences(student, n, seed)
    return _grad(lambda theta: _surrogate(kind)(theta, teacher.double(), y).mean(), student)


def expected_grad(student, teacher, kind) -> torch.Tensor:
    r"""The estimator's exact expected gradient, E_y[\nabla L(y)] = \sum_y p(y) \nabla L(y): [P, V],
    by enumerating every sequence: the bias with no Monte-Carlo noise."""
    y = all_sequences(student.shape[1], table_length(student))
    weight = token_logprobs(student.double(), y).sum(-1).exp().detach()
    return _grad(lambda theta: (weight * _surrogate(kind)(theta, teacher.double(), y)).sum(), student)


# ---------------------------------------------------------------- measuring bias and variance
def exact_moments(student, teacher, kind) -> dict:
    r"""Exact bias and variance of the one-sequence gradient estimate, by enumeration.

    With g(y) = \nabla L(y) [P*V] and g* the exact gradient:
        bias      |E[g] - g*| / |g*|
        variance  E|g - E[g]|^2 / |g*|^2          (trace of the covariance, relative)
    An n-sequence mean has the same bias and variance / n, so its relative mean squared error
    is bias^2 + variance / n. Returns a dict of python floats."""
    theta = student.detach().double()
    y = all_sequences(student.shape[1], table_length(student))
    p = token_logprobs(theta, y).sum(-1).exp()
    per_seq = torch.autograd.functional.jacobian(lambda t: _surrogate(kind)(t, teacher.double(), y), theta)
    per_seq = per_seq.flatten(1)                                   # [V^T, P*V]: g(y) for every y
    mean = p @ per_seq
    exact = sequence_kl_grad(student, teacher).flatten()
    variance = p @ (per_seq - mean).pow(2).sum(-1)
    return {"bias": float((mean - exact).norm() / exact.norm()), "variance": float(variance / exact.norm() ** 2)}


def sampled_grads(student, teacher, kind, n: int, repeats: int, seed: int = 0) -> torch.Tensor:
    """``repeats`` independent n-sample gradients (seeds seed, seed+1, ...), flattened: [R, P*V]."""
    return torch.stack([estimator_grad(student, teacher, kind, n, seed + r).flatten() for r in range(repeats)])


def projected_z(grads: torch.Tensor, target: torch.Tensor, direction: torch.Tensor) -> float:
    r"""z-score of the mean gradient along one direction u, for grads [R, D] and target, u [D]:

        z = (mean_r u.g_r - u.target) / (std_r(u.g_r) / \sqrt R)

    About N(0, 1) for an unbiased estimator (R batch means, central limit theorem); a bias along
    u makes |z| grow like \sqrt R."""
    proj = grads @ direction.flatten()
    return float((proj.mean() - target.flatten() @ direction.flatten()) / (proj.std() / grads.shape[0] ** 0.5))


def gradient_stats(student, teacher, kind, n: int, repeats: int = 100, seed: int = 0) -> dict:
    r"""Monte-Carlo check of an n-sequence estimator against the exact gradient g*.

    From R = ``repeats`` batches of n sequences with gradients g_1 .. g_R:
        cosine    mean_r cos(g_r, g*)                       how well one batch points
        bias      |\bar g - g*| / |g*|                       relative bias norm (includes noise)
        bias_se   \sqrt{\sum_j Var(g_j) / R} / |g*|          the noise part of ``bias``: an
                                                              unbiased estimator has bias ~ bias_se
        variance  \sum_j Var(g_j) / |g*|^2                   one batch's relative variance
    Returns a dict of python floats."""
    exact = sequence_kl_grad(student, teacher).flatten()
    grads = sampled_grads(student, teacher, kind, n, repeats, seed)
    norm, total_var = exact.norm(), grads.var(0).sum()
    return {
        "cosine": float(torch.nn.functional.cosine_similarity(grads, exact.unsqueeze(0)).mean()),
        "bias": float((grads.mean(0) - exact).norm() / norm),
        "bias_se": float((total_var / repeats).sqrt() / norm),
        "variance": float(total_var / norm**2),
    }
