"""GRPO, knowledge distillation and KDRL losses.

Every loss returns a scalar to *minimise* (the negative of the paper's objective J) and a dict of
detached 0-dim tensors for logging (converted to numbers once per step by the trainer, so no
host sync happens inside the loss). Shapes: logp / old_logp / teacher_logp / mask [B, T]
(mask 1 = response token, 0 = prompt or padding), logits [B, T, V], advantages [B] or [B, T],
kd_weights [B] with B = n_prompts * group_size and groups contiguous.

Aggregation is a weighted sum: ``token_weights`` turns the mask into per-token weights whose
sum over the *whole rollout* is the chosen normaliser. Passing a slice of those weights
(``weights=``) makes a micro-batch's loss its exact share of the whole-rollout loss, so the
summed gradients do not depend on the micro-batch size.

Padding positions may hold any value (even -inf or NaN): they are zeroed before use, so they reach
neither the loss nor the gradients.
"""

import math

import torch

from .advantages import check_groups
from .kl import token_kl

LOSS_AGGS = ("token-mean", "seq-mean", "seq-sum-norm")
KD_STRATEGIES = ("all", "incorrect", "failed-groups")


def _pad_zero(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, torch.zeros_like(x))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``mask`` as a detached 0-dim tensor (0 for an empty mask)."""
    m = mask.bool()
    return _pad_zero(x.detach(), m).sum() / m.sum().clamp(min=1)


def token_weights(mask: torch.Tensor, mode: str, max_len: int | None = None) -> torch.Tensor:
    r"""Per-token weights w [B, T] such that \sum_{i,t} w_{it} v_{it} is the aggregate of v.

        "token-mean":   w_{it} = m_{it} / \sum_{j,s} m_{js}              (KDRL paper, DAPO)
        "seq-mean":     w_{it} = m_{it} / (|o_i| B')                      (original GRPO;
                        B' = sequences with at least one token, empty ones skipped)
        "seq-sum-norm": w_{it} = m_{it} / (B L)                           (Dr. GRPO; L = max_len,
                        default T; a constant, so no length bias)

    Args:
        mask: [B, T] of the whole rollout, 1 = counted token.
        mode: one of the names above.
        max_len: L for "seq-sum-norm" (the generation budget).
    """
    m = mask.bool()
    w = m.to(torch.get_default_dtype())
    if mode == "token-mean":
        return w / m.sum().clamp(min=1)
    if mode == "seq-mean":
        lengths = m.sum(-1, keepdim=True)
        return w / lengths.clamp(min=1) / (lengths > 0).sum().clamp(min=1)
    if mode == "seq-sum-norm":
        norm_len = mask.shape[-1] if max_len is None else max_len
        if norm_len <= 0:
            raise ValueError(f"max_len must be positive, got {max_len}")
        return w / (mask.shape[0] * norm_len)
    raise ValueError(f"unknown loss aggregation {mode!r}: choose one of {', '.join(LOSS_AGGS)}")


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
              max_len: int | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce per-token values [B, T] to a scalar: sum of values x ``token_weights`` (or the
    given ``weights`` slice of a larger rollout). 0 when the mask is empty."""
    m = mask.bool()
    w = token_weights(m, mode, max_len) if weights is None else weights
    return (_pad_zero(values, m) * w.to(values.dtype)).sum()


def grpo_loss(logp, old_logp, advantages, mask, clip_eps: float = 0.2, clip_eps_high: float | None = None,
              loss_agg: str = "token-mean", max_len: int | None = None, weights=None):
    r"""Clipped policy-gradient surrogate of GRPO (no reference-KL term).

        \rho_{it} = \exp(\log\pi_\theta(o_{it}) - \log\pi_{old}(o_{it}))
        L = -agg_{i,t}\big[ \min(\rho_{it} A_{it},\ clip(\rho_{it}, 1-\epsilon_{low}, 1+\epsilon_{high}) A_{it}) \big]

    with \epsilon_{low} = clip_eps and \epsilon_{high} = clip_eps_high (default clip_eps; DAPO's
    "clip-higher" raises it). Where the clipped branch wins, the token gets no gradient: the
    update has already moved that token's probability far enough in the advantage's direction.

    Args:
        logp: [B, T] log-probs of the sampled tokens under pi_theta (requires grad).
        old_logp: [B, T] the same under the sampling policy pi_old (treated as a constant).
        advantages: [B] per response, or [B, T] per token (KL folded into the reward).
        mask: [B, T] response mask.
        loss_agg, max_len, weights: see ``aggregate``.

    Returns:
        (loss, metrics): "policy_loss", "clip_frac" (share of response tokens where the clipped
        branch is selected and differs), "ratio_mean".
    """
    m = mask.bool()
    adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(-1)
    ratio = (_pad_zero(logp, m) - _pad_zero(old_logp.detach(), m)).exp()
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + eps_high) * adv
    loss = -aggregate(torch.minimum(unclipped, clipped), m, loss_agg, max_len, weights=weights)
    metrics = {"policy_loss": loss.detach(), "clip_frac": masked_mean((clipped < unclipped).to(ratio.dtype), m),
               "ratio_mean": masked_mean(ratio, m)}
    return loss, metrics


def one_token_surrogate(ratio: float, advantage: float, clip_eps: float = 0.2,
                        clip_eps_high: float | None = None) -> tuple[float, float, bool]:
    r"""GRPO's clipped surrogate for a single one-token response, read off ``grpo_loss``.

    With \log\pi_{old} = 0 and \log\pi_\theta = \log\rho, ``grpo_loss`` gives L = -J and autograd
    gives dJ / d\log\pi_\theta, the weight with which the token's log-probability is pushed:

        J = \min(\rho A,\ clip(\rho, 1-\epsilon_{low}, 1+\epsilon_{high}) A)
        dJ/d\log\pi_\theta = \rho A where the unclipped branch is selected, 0 where the clipped one is

    Args:
        ratio: \rho = \pi_\theta / \pi_{old} > 0.
        advantage: A.
        clip_eps, clip_eps_high: \epsilon_{low} and \epsilon_{high} (default clip_eps), as in ``grpo_loss``.

    Returns:
        (J, dJ_dlogp, clipped) as Python floats and a bool; clipped is True where the clipped
        branch is selected and differs (``grpo_loss``'s ``clip_frac`` of this one token).
    """
    if not ratio > 0:
        raise ValueError(f"ratio must be positive (it is pi_theta / pi_old), got {ratio}")
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    loss, metrics = grpo_loss(logp, torch.zeros(1, 1, dtype=torch.float64),
                              torch.tensor([float(advantage)], dtype=torch.float64), torch.ones(1, 1),
                              clip_eps=clip_eps, clip_eps_high=clip_eps_high)
    loss.backward()
    # + 0.0 turns -0.0 (the negated zero of a clipped gradient) into 0.0
    return -loss.item() + 0.0, -logp.grad.item() + 0.0, bool(metrics["clip_frac"].item() > 0)


def kd_mask(rewards: torch.Tensor, group_size: int, strategy: str = "all", threshold: float = 1.0) -> torch.Tensor:
    r"""Reward-guided choice of which responses are distilled: w_i \in \{0, 1\}.

        "all":           w_i = 1
        "incorrect":     w_i = [r_i < threshold]          (KDRL-Mask in the paper: no KD on
                                                           responses that already earn the reward)
        "failed-groups": w_i = [\max_{j \in g(i)} r_j < threshold]   (a group-gated variant, not
                                                           from the KDRL paper: KD only for prompts
                                                           where no response succeeded)

    Args:
        rewards: [B] raw rewards, groups of ``group_size`` contiguous.
        group_size: responses per prompt.
        strategy, threshold: see above.

    Returns:
        [B] float tensor of 0/1 on the rewards' device.
    """
    if strategy not in KD_STRATEGIES:
        raise ValueError(f"unknown KD strategy {strategy!r}: choose one of {', '.join(KD_STRATEGIES)}")
    n_groups = check_groups(rewards.shape[0], group_size, min_size=1)
    failed = rewards < threshold
    if strategy == "all":
        failed = torch.ones_like(failed)
    elif strategy == "failed-groups":
        failed = failed.view(n_groups, group_size).all(dim=1).repeat_interleave(group_size)
    return failed.to(torch.get_default_dtype())


def reverse_kl_loss(logp, teacher_logp, mask, kind: str = "k2", logits=None, teacher_logits=None,
                    top_k: int | None = None, kd_weights=None, loss_agg: str = "token-mean",
                    max_len: int | None = None, weights=None, kl_values=None):
    r"""On-policy KD: minimise KL(pi_theta || pi_T) on the student's own samples (KD-RKL).

        L = agg_{i,t}\big[ w_i \cdot \widehat{KL}_{it} \big],
        \widehat{KL}_{it} = token_kl(kind, \log\pi_\theta(o_{it}), \log\pi_T(o_{it}), ...)

    With samples held fixed, kind="k2" has the gradient of the per-token reverse KL in
    expectation (k3 follows the forward KL, k1 has zero mean gradient); "exact"/"topk" sum over
    the vocabulary at each position and need only the logits (``logp`` and ``teacher_logp`` may
    be None). The teacher is frozen (its inputs are detached).

    Args:
        logp, teacher_logp: [B, T] student / teacher log-probs of the sampled tokens.
        mask: [B, T] response mask.
        kind: "k1" | "k2" | "k3" | "exact" | "topk".
        logits, teacher_logits: [B, T, V], for "exact" / "topk".
        kl_values: [B, T] the per-token KL of ``kind`` already computed (the trainer's token-chunked
            head sums "exact" / "topk" a chunk of tokens at a time, so no [B, T, V] is passed).
        kd_weights: [B] per-response weights w_i (``kd_mask``); default 1. The normaliser stays
            the response mask, so unweighted responses simply contribute 0.
        loss_agg, max_len, weights: see ``aggregate``.

    Returns:
        (loss, metrics): "kd_loss" and "kl" = mean per-token KL over response tokens (unweighted).
    """
    m = mask.bool()
    t_logits = None if teacher_logits is None else _pad_zero(teacher_logits.detach(), m.unsqueeze(-1))
    if logits is not None:  # padding rows may hold anything: zero them so no NaN reaches the gradient
        logits = _pad_zero(logits, m.unsqueeze(-1))
    lp = None if logp is None else _pad_zero(logp, m)
    tlp = None if teacher_logp is None else _pad_zero(teacher_logp.detach(), m)
    kl = _pad_zero(token_kl(kind, lp, tlp, logits, ref_logits=t_logits, top_k=top_k) if kl_values is None
                   else kl_values, m)
    weighted = kl if kd_weights is None else kd_weights.to(kl.dtype).unsqueeze(-1) * kl
    loss = aggregate(weighted, m, loss_agg, max_len, weights=weights)
    return loss, {"kd_loss": loss.detach(), "kl": masked_mean(kl, m)}


def forward_kl_loss(logp, mask, loss_agg: str = "token-mean", max_len: int | None = None, weights=None):
    r"""KD with forward KL on *teacher* samples, which is SFT on the teacher's responses (KD-FKL).

        KL(pi_T || pi_theta) = E_{o \sim \pi_T}[\log\pi_T(o)] - E_{o \sim \pi_T}[\log\pi_\theta(o)]
        L = -agg_{i,t}[\log\pi_\theta(o_{it})]

    The first term (minus the teacher's entropy) does not depend on theta and is dropped, so the
    loss is the negative log-likelihood, not the KL value itself.

    Args:
        logp: [B, T] student log-probs of teacher-generated tokens (requires grad).
        mask: [B, T] response mask.
        loss_agg, max_len, weights: see ``aggregate``.

    Returns:
        (loss, metrics) with "kd_loss" and "nll" = mean negative log-likelihood per token.
    """
    m = mask.bool()
    logp = _pad_zero(logp, m)
    loss = -aggregate(logp, m, loss_agg, max_len, weights=weights)
    return loss, {"kd_loss": loss.detach(), "nll": -masked_mean(logp, m)}


def kdrl_loss(logp, old_logp, advantages, mask, teacher_logp, beta: float, kl_kind: str = "k2",
              kd_weights=None, clip_eps: float = 0.2, clip_eps_high: float | None = None,
              loss_agg: str = "token-mean", max_len: int | None = None, logits=None, teacher_logits=None,
              top_k: int | None = None, weights=None, kl_values=None):
    r"""KDRL with the KL in the loss:  L = L_GRPO(A) + \beta \cdot L_RKL.

        L_GRPO = grpo_loss(logp, old_logp, A),   L_RKL = reverse_kl_loss(kl_kind, kd_weights)

    i.e. J_KDRL = J_GRPO - \beta KL(\pi_\theta || \pi_T) with the teacher in the place of GRPO's
    reference model. KL folded into the reward instead is a change of advantages
    (``advantages.per_token_kl_advantages``) followed by ``grpo_loss``. beta = 0 is ``grpo_loss``
    exactly. Arguments as in ``grpo_loss`` and ``reverse_kl_loss``.

    Returns:
        (loss, metrics): the union of both losses' metrics.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}: a negative KL weight pushes away from the teacher")
    agg = {"loss_agg": loss_agg, "max_len": max_len, "weights": weights}
    pg, pg_metrics = grpo_loss(logp, old_logp, advantages, mask, clip_eps=clip_eps, clip_eps_high=clip_eps_high, **agg)
    kd, kd_metrics = reverse_kl_loss(logp, teacher_logp, mask, kind=kl_kind, logits=logits, teacher_logits=teacher_logits,
                                     top_k=top_k, kd_weights=kd_weights, kl_values=kl_values, **agg)
    loss = pg if beta == 0 else pg + beta * kd  # beta = 0: not even a NaN KL can leak in
    return loss, {**pg_metrics, **kd_metrics}
