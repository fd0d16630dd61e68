"""GRPO, knowledge distillation and KDRL losses.

Every function returns a scalar to *minimise* (the negative of the paper's objective J) and a
dict of detached python floats for logging. Shapes: logp / old_logp / teacher_logp / mask [B, T]
(mask 1 = response token, 0 = prompt or padding), logits [B, T, V], rewards [B] with
B = n_prompts * group_size and groups contiguous.

Padding positions may hold any value (even -inf or NaN): they are zeroed before use, so they reach
neither the loss nor the gradients.
"""

import torch

from .advantages import check_groups, group_advantages
from .kl import exact_kl, kl_estimate, token_kl

LOSS_AGGS = ("token-mean", "seq-mean", "seq-sum-norm")
KD_STRATEGIES = ("all", "incorrect", "failed-groups")
KL_MODES = ("loss", "reward")


def _pad_zero(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~mask, 0.0)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    x = _pad_zero(x.detach(), mask)
    return float(x.sum() / mask.sum().clamp(min=1))


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int | None = None
) -> torch.Tensor:
    r"""Reduce per-token values to a scalar; the choice changes how long responses are weighted.

        "token-mean":   \frac{1}{\sum_i |o_i|} \sum_i \sum_t v_{it}        (KDRL paper, DAPO)
        "seq-mean":     \frac{1}{B'} \sum_i \frac{1}{|o_i|} \sum_t v_{it}  (original GRPO;
                        B' = sequences with at least one token, empty ones are skipped)
        "seq-sum-norm": \frac{1}{B \cdot L} \sum_i \sum_t v_{it}           (Dr. GRPO; L = max_len,
                        default T, a constant so no length bias)

    Args:
        values: [B, T].
        mask: [B, T], 1 = counted token (bool, int or float 0/1).
        mode: one of the three names above.
        max_len: L for "seq-sum-norm".

    Returns:
        0-dim tensor; 0 when the mask is empty.
    """
    m = mask.bool()
    v = torch.where(m, values, torch.zeros_like(values))
    if mode == "token-mean":
        return v.sum() / m.sum().clamp(min=1)
    if mode == "seq-mean":
        lengths = m.sum(-1)
        per_seq = v.sum(-1) / lengths.clamp(min=1)
        return per_seq.sum() / (lengths > 0).sum().clamp(min=1)
    if mode == "seq-sum-norm":
        norm_len = values.shape[-1] if max_len is None else max_len
        if norm_len <= 0:
            raise ValueError(f"max_len must be positive, got {max_len}")
        return v.sum() / (values.shape[0] * norm_len)
    raise ValueError(f"unknown loss aggregation {mode!r}: choose one of {', '.join(LOSS_AGGS)}")


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    loss_agg: str = "token-mean",
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict]:
    r"""Clipped policy-gradient surrogate of GRPO (no reference-KL term).

        \rho_{it} = \exp(\log\pi_\theta(o_{it}) - \log\pi_{old}(o_{it}))
        L = -agg_{i,t}\big[ \min(\rho_{it} A_i,\ clip(\rho_{it}, 1-\epsilon_{low}, 1+\epsilon_{high}) A_i) \big]

    with \epsilon_{low} = clip_eps and \epsilon_{high} = clip_eps_high (default clip_eps; DAPO's
    "clip-higher" raises it). Where the clipped branch wins, the token gets no gradient: the
    update has already moved that token's probability far enough in the advantage's direction.

    Args:
        logp: [B, T] log-probs of the sampled tokens under pi_theta (requires grad).
        old_logp: [B, T] the same under the sampling policy pi_old (treated as a constant).
        advantages: [B] per response, or [B, T] per token.
        mask: [B, T] response mask.
        loss_agg, max_len: see ``aggregate``.

    Returns:
        (loss, metrics) with metrics "policy_loss", "clip_frac" (share of response tokens where
        the clipped branch is selected and differs), "ratio_mean" (mean rho over response tokens).
    """
    m = mask.bool()
    adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(-1)
    log_ratio = _pad_zero(logp, m) - _pad_zero(old_logp.detach(), m)
    ratio = log_ratio.exp()
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + eps_high) * adv
    loss = -aggregate(torch.minimum(unclipped, clipped), m, loss_agg, max_len)
    metrics = {
        "policy_loss": float(loss.detach()),
        "clip_frac": _masked_mean((clipped < unclipped).to(ratio.dtype), m),
        "ratio_mean": _masked_mean(ratio, m),
    }
    return loss, metrics


def kd_mask(
    rewards: torch.Tensor, group_size: int, strategy: str = "all", threshold: float = 1.0
) -> torch.Tensor:
    r"""Reward-guided choice of which responses are distilled: w_i \in \{0, 1\}.

        "all":           w_i = 1
        "incorrect":     w_i = [r_i < threshold]          (no KD on responses that already earn
                                                           the reward: RL handles those)
        "failed-groups": w_i = [\max_{j \in g(i)} r_j < threshold]   (KD only for prompts where
                                                           no response succeeded: RL has no signal)

    Args:
        rewards: [B] raw rewards, groups of ``group_size`` contiguous.
        group_size: responses per prompt.
        strategy: one of the names above.
        threshold: reward counted as success.

    Returns:
        [B] float tensor of 0/1.
    """
    if strategy not in KD_STRATEGIES:
        raise ValueError(f"unknown KD strategy {strategy!r}: choose one of {', '.join(KD_STRATEGIES)}")
    n_groups = check_groups(rewards.shape[0], group_size, min_size=1)
    failed = rewards < threshold
    if strategy == "all":
        return torch.ones(rewards.shape, dtype=torch.get_default_dtype(), device=rewards.device)
    if strategy == "failed-groups":
        failed = failed.view(n_groups, group_size).all(dim=1).repeat_interleave(group_size)
    return failed.to(torch.get_default_dtype())


def reverse_kl_loss(
    logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "k2",
    logits: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    top_k: int | None = None,
    kd_weights: torch.Tensor | None = None,
    loss_agg: str = "token-mean",
) -> tuple[torch.Tensor, dict]:
    r"""On-policy KD: minimise KL(pi_theta || pi_T) on the student's own samples (KD-RKL).

        L = agg_{i,t}\big[ w_i \cdot \widehat{KL}_{it} \big],
        \widehat{KL}_{it} = token_kl(kind, \log\pi_\theta(o_{it}), \log\pi_T(o_{it}), ...)

    With samples held fixed, kind="k2" has the gradient of the reverse KL in expectation (k3
    would follow the forward KL, k1 has zero mean gradient); "exact"/"topk" use the teacher's
    full distribution at each position. The teacher is frozen (its inputs are detached).

    Args:
        logp: [B, T] student log-probs of its sampled tokens (requires grad).
        teacher_logp: [B, T] teacher log-probs of the same tokens.
        mask: [B, T] response mask.
        kind: "k1" | "k2" | "k3" | "exact" | "topk".
        logits, teacher_logits: [B, T, V], needed for "exact"/"topk" and for the exact_kl metric.
        top_k: for "topk".
        kd_weights: [B] per-response weights w_i (e.g. from ``kd_mask``); default all 1. The
            normaliser stays the response mask, so unweighted responses simply contribute 0.
        loss_agg: see ``aggregate``.

    Returns:
        (loss, metrics): "kl" = mean of the per-token KL over response tokens (unweighted),
        "exact_kl" = mean exact reverse KL over response tokens when logits are given.
    """
    m = mask.bool()
    t_logits = None if teacher_logits is None else teacher_logits.detach()
    kl = token_kl(kind, _pad_zero(logp, m), _pad_zero(teacher_logp.detach(), m), logits, t_logits, top_k)
    weighted = kl if kd_weights is None else kd_weights.to(kl.dtype).unsqueeze(-1) * kl
    loss = aggregate(weighted, m, loss_agg)
    metrics = {"kl": _masked_mean(kl, m)}
    if logits is not None and t_logits is not None:
        with torch.no_grad():
            metrics["exact_kl"] = _masked_mean(exact_kl(logits, t_logits), m)
    return loss, metrics


def forward_kl_loss(
    logp: torch.Tensor, mask: torch.Tensor, loss_agg: str = "token-mean"
) -> tuple[torch.Tensor, dict]:
    r"""KD with forward KL on *teacher* samples, which is SFT on the teacher's responses (KD-FKL).

        KL(pi_T || pi_theta) = E_{o \sim \pi_T}[\log\pi_T(o)] - E_{o \sim \pi_T}[\log\pi_\theta(o)]
        L = -agg_{i,t}[\log\pi_\theta(o_{it})]

    The first term (minus the teacher's entropy) does not depend on theta and is dropped, so the
    loss is the negative log-likelihood, not the KL value itself.

    Args:
        logp: [B, T] student log-probs of teacher-generated tokens (requires grad).
        mask: [B, T] response mask.
        loss_agg: see ``aggregate``.

    Returns:
        (loss, metrics) with "nll" = mean negative log-likelihood per response token.
    """
    m = mask.bool()
    logp = _pad_zero(logp, m)
    loss = -aggregate(logp, m, loss_agg)
    return loss, {"nll": -_masked_mean(logp, m)}


def kdrl_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    beta: float,
    kl_kind: str = "k2",
    kl_mode: str = "loss",
    kd_strategy: str = "all",
    kd_threshold: float = 1.0,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    loss_agg: str = "token-mean",
    adv_scale: str = "std",
    logits: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    top_k: int | None = None,
) -> tuple[torch.Tensor, dict]:
    r"""KDRL: GRPO with the reverse KL to the teacher, J = J_GRPO - \beta KL(pi_theta || pi_T).

    KD weights w_i = kd_mask(r, G, kd_strategy, kd_threshold) come from the *raw* rewards.

    kl_mode="loss" (KL as a differentiable penalty):
        A = group_advantages(r)
        L = L_GRPO(A) + \beta \cdot agg_{i,t}[ w_i \widehat{KL}_{it} ],  \widehat{KL} = token_kl(kl_kind)

    kl_mode="reward" (KL folded into the reward; no KL gradient of its own):
        r'_i = r_i - \beta w_i \sum_t (\log\pi_{old}(o_{it}) - \log\pi_T(o_{it}))
        A = group_advantages(r'),  L = L_GRPO(A)
    The sum over tokens is the k1 estimate of the *sequence-level* KL,
    \log \pi_{old}(o_i) / \pi_T(o_i); it is computed from old_logp and detached, so the shaped
    reward is a constant with respect to theta, like r itself.

    beta = 0 reproduces ``grpo_loss`` exactly (value and gradient).

    Args:
        logp, old_logp, teacher_logp, mask: [B, T].
        rewards: [B] raw rewards, groups of ``group_size`` contiguous.
        beta: KL coefficient >= 0 (see ``schedules.make_schedule`` for annealing).
        kl_kind: per-token KL for kl_mode="loss" and for the "kl" metric, see ``token_kl``.
        logits, teacher_logits: [B, T, V], for "exact"/"topk" and the exact_kl metric.
        other args: as in ``grpo_loss``, ``kd_mask`` and ``group_advantages``.

    Returns:
        (loss, metrics): "loss", "policy_loss", "kl" (NaN if kl_kind needs logits that were not
        given and the KL is not in the loss), "exact_kl" (if logits), "clip_frac",
        "ratio_mean", "kd_frac" (share of response tokens that receive KD), "kd_masked_frac",
        "beta", "adv_std".
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}: a negative KL weight pushes away from the teacher")
    if kl_mode not in KL_MODES:
        raise ValueError(f"unknown kl_mode {kl_mode!r}: choose one of {', '.join(KL_MODES)}")
    m = mask.bool()
    kd_w = kd_mask(rewards, group_size, kd_strategy, kd_threshold).to(logp.dtype)
    shaped = rewards
    if kl_mode == "reward" and beta > 0:
        seq_k1 = _pad_zero(kl_estimate(old_logp, teacher_logp, "k1").detach(), m).sum(-1)
        shaped = rewards - beta * kd_w * seq_k1
    adv = group_advantages(shaped, group_size, adv_scale)
    loss, pg_metrics = grpo_loss(logp, old_logp, adv, mask, clip_eps, clip_eps_high, loss_agg)
    in_loss = kl_mode == "loss" and beta > 0
    kd_metrics = {"kl": float("nan")}
    # An "exact"/"topk" KL outside the loss is only a log entry: report NaN instead of failing
    # when the teacher's logits were never computed (a GRPO baseline run with beta = 0).
    if in_loss or kl_kind not in ("exact", "topk") or (logits is not None and teacher_logits is not None):
        with torch.set_grad_enabled(in_loss and torch.is_grad_enabled()):
            kd_loss, kd_metrics = reverse_kl_loss(
                logp, teacher_logp, mask, kl_kind, logits, teacher_logits, top_k, kd_w, loss_agg
            )
        if in_loss:
            loss = loss + beta * kd_loss
    kd_frac = _masked_mean(kd_w.unsqueeze(-1).expand_as(m), m)
    return loss, {
        "loss": float(loss.detach()),
        **pg_metrics,
        **kd_metrics,
        "kd_frac": kd_frac,
        "kd_masked_frac": 1.0 - kd_frac,
        "beta": float(beta),
        "adv_std": float(adv.std()),
    }
