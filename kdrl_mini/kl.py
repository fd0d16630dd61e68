"""KL divergences between the student pi_theta and a second policy (teacher or reference).

Two families:

* sampled estimates (Schulman's k1, k2, k3) that only need the log-probabilities of the tokens
  the student actually generated: cheap, but noisy and, used as a loss, each has its own gradient;
* exact per-position KL over the whole vocabulary (or its top-k part), which needs full logits.

Notation: d = log pi_theta(x) - log pi_ref(x) for a token x sampled from pi_theta.
"""

import math

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")          # need only the sampled tokens' log-probs
FULL_VOCAB_KINDS = ("exact", "topk")         # sum over the vocabulary: need both models' logits
TOKEN_KL_KINDS = KL_ESTIMATORS + FULL_VOCAB_KINDS
# Below this log-ratio k3 continues along its tangent line (see kl_estimate): e^{-d} would
# overflow float32 at d <= -88.7, and its square (in a gradient norm) already at d <= -44.
K3_LINEAR_BELOW = -30.0


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    r"""Single-sample estimate of KL(pi || pi_ref) at each sampled token.

    With d = \log\pi(x) - \log\pi_{ref}(x), x \sim \pi:

        k1 = d                          E_pi[k1] = KL(pi||pi_ref)       (unbiased, can be < 0)
        k2 = d^2 / 2                    E_pi[k2] != KL (biased), >= 0
        k3 = e^{-d} - 1 + d             E_pi[k3] = KL(pi||pi_ref)       (unbiased, >= 0)

    Used directly as a loss (samples held fixed), the expected gradients are
    E[\nabla k1] = 0, E[\nabla k2] = \nabla KL(pi||pi_ref), E[\nabla k3] = \nabla KL(pi_ref||pi).

    k3 for very negative d: below ``K3_LINEAR_BELOW`` (c = -30, i.e. the student gives its own
    sample e^30 ~ 1e13 times less probability than the reference) k3 continues along its tangent
    at c, k3(c) + (1 - e^{-c}) (d - c): finite for every finite d, convex, continuous with a
    continuous gradient, and a lower bound of the exact value (k3 is convex). Computed exactly,
    e^{-d} overflows float32 to inf at d <= -88.7 (and float64 only moves that to -709, while the
    value itself would not fit back into float32), so one inf token would turn the loss and
    every gradient into inf/NaN. The gradient there is the constant 1 - e^{30} ~ -1.1e13, which
    ``max_grad_norm`` clipping handles. NaN stays NaN; d = -inf gives +inf.

    Args:
        logp: log pi(x), any shape, e.g. [B, T]; gradients flow through it.
        ref_logp: log pi_ref(x), same shape as ``logp``.
        kind: "k1", "k2" or "k3".

    Returns:
        Tensor with the shape of ``logp``.
    """
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d.pow(2)
    if kind == "k3":
        # expm1 keeps k3 accurate when the two policies almost agree (d ~ 0), where
        # exp(-d) - 1 would cancel catastrophically in float32.
        # Two branches joined by where (not added: their large gradients would cancel in float32).
        c = K3_LINEAR_BELOW
        exact = torch.expm1(-d.clamp(min=c)) + d.clamp(min=c)
        tangent = (math.expm1(-c) + c) - math.expm1(-c) * (d.clamp(max=c) - c)
        return torch.where(d < c, tangent, exact)
    raise ValueError(f"unknown KL estimator {kind!r}: choose one of {', '.join(KL_ESTIMATORS)}")


def entropy(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""Entropy in nats of the categorical distribution p = softmax(logits) along ``dim``.

        H(p) = -\sum_v p_v \log p_v,   computed from log_softmax, with 0 \log 0 = 0

    Masked entries (logit -inf, so p_v = 0) contribute 0 to the value and receive zero (not NaN)
    gradient. A NaN logit gives NaN (it is not mistaken for zero probability). Every distribution
    needs at least one finite logit. Uniform over V entries gives log V; one-hot gives 0.

    Args:
        logits: any shape with the vocabulary (support) along ``dim``, e.g. [V], [B, T, V].
        dim: the dimension that is summed over.

    Returns:
        ``logits``'s shape without ``dim`` (e.g. [] for [V], [B, T] for [B, T, V]).
    """
    log_p = torch.log_softmax(logits, dim=dim)
    # Replace -inf by 0 *before* multiplying: 0 * (-inf) = NaN would appear in the value and in the
    # backward pass even where the probability is exactly 0.
    safe = torch.where(log_p != float("-inf"), log_p, torch.zeros_like(log_p))
    return -(safe.exp() * safe).sum(dim)


def _kl_from_log_probs(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """sum_v a_v (log a_v - log b_v) over the last dim, with 0 * log 0 = 0. A NaN anywhere gives
    NaN (it is not mistaken for "no support", which would report 0 while the gradient is NaN)."""
    support = log_a != float("-inf")
    # Both log-probs are replaced outside a's support *before* subtracting: otherwise
    # (-inf) - (-inf) = NaN appears in the graph and poisons the backward pass even though
    # the forward value would be masked away.
    safe_a = torch.where(support, log_a, torch.zeros_like(log_a))
    safe_b = torch.where(support, log_b, torch.zeros_like(log_b))
    return (safe_a.exp() * support * (safe_a - safe_b)).sum(-1)


def exact_kl(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    direction: str = "reverse",
    top_k: int | None = None,
) -> torch.Tensor:
    r"""Exact KL between two categorical distributions at every position.

    With p = softmax(logits) (student) and q = softmax(ref_logits):

        reverse: KL(p || q) = \sum_v p_v (\log p_v - \log q_v)
        forward: KL(q || p) = \sum_v q_v (\log q_v - \log p_v)

    top_k: the sum runs over S = the k tokens the *student* ranks highest, and both
    distributions are renormalised on S, p^S_v = p_v / \sum_{u \in S} p_u (same for q), so the
    result is the proper KL between the two restricted distributions: it is >= 0, equals the
    full KL when k = V, and is 0 when k = 1. ``top_k >= V`` means the full vocabulary.

    Masked vocabulary entries (logit -inf) are fine: terms with zero mass on the weighting side
    contribute 0 and receive zero (not NaN) gradient. Mass on an entry the other distribution
    gives zero probability makes the KL +inf, which is the correct value. Every position needs at
    least one finite logit.

    Args:
        logits: student logits [..., V], e.g. [B, T, V].
        ref_logits: teacher / reference logits, same shape.
        direction: "reverse" (mode seeking, the KDRL term) or "forward" (mass covering).
        top_k: optional int >= 1.

    Returns:
        KL per position, shape [...] (e.g. [B, T]).
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ: "
            "both policies must score the same vocabulary at the same positions"
        )
    if top_k is None:
        log_p = torch.log_softmax(logits, dim=-1)
        log_q = torch.log_softmax(ref_logits, dim=-1)
    else:
        if int(top_k) < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k}")
        # Renormalised on S, log p^S = z_S - logsumexp(z_S): no full-vocabulary softmax needed.
        k = min(int(top_k), logits.shape[-1])
        idx = logits.topk(k, dim=-1).indices
        z_p, z_q = logits.gather(-1, idx), ref_logits.gather(-1, idx)
        log_p = z_p - torch.logsumexp(z_p, dim=-1, keepdim=True)
        log_q = z_q - torch.logsumexp(z_q, dim=-1, keepdim=True)
    if direction == "reverse":
        return _kl_from_log_probs(log_p, log_q)
    if direction == "forward":
        return _kl_from_log_probs(log_q, log_p)
    raise ValueError(f"unknown KL direction {direction!r}: choose 'reverse' or 'forward'")


def token_kl(
    kind: str,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    logits: torch.Tensor | None = None,
    ref_logits: torch.Tensor | None = None,
    top_k: int | None = None,
) -> torch.Tensor:
    r"""Per-token KL(pi_theta || pi_ref) as the losses use it.

        kind in {k1, k2, k3}: kl_estimate(logp, ref_logp, kind)            (sampled tokens only)
        kind == "exact":      \sum_v p_v (\log p_v - \log q_v)              (full vocabulary)
        kind == "topk":       the same sum over the student's top-k tokens, renormalised

    Args:
        kind: one of "k1", "k2", "k3", "exact", "topk".
        logp, ref_logp: [B, T] log-probs of the sampled tokens.
        logits, ref_logits: [B, T, V]; required for "exact" and "topk".
        top_k: required for "topk".

    Returns:
        [B, T] tensor.
    """
    if kind in KL_ESTIMATORS:
        return kl_estimate(logp, ref_logp, kind)
    if kind not in FULL_VOCAB_KINDS:
        raise ValueError(f"unknown KL kind {kind!r}: choose one of {', '.join(TOKEN_KL_KINDS)}")
    if logits is None or ref_logits is None:
        raise ValueError(
            f"KL kind {kind!r} sums over the vocabulary and needs both logits and ref_logits "
            "([B, T, V]); pass them, or use a sampled estimator ('k1', 'k2', 'k3')"
        )
    if kind == "topk" and top_k is None:
        raise ValueError("KL kind 'topk' needs top_k (e.g. top_k=20); use 'exact' for the full sum")
    return exact_kl(logits, ref_logits, "reverse", top_k if kind == "topk" else None)
