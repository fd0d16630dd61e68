"""Group-relative advantages (GRPO), and the KL to the teacher folded into them (KDRL's reward form)."""

import operator

import torch

ADV_SCALES = ("std", "none")


def check_groups(n: int, group_size: int, min_size: int = 2) -> int:
    """Check n = n_groups * group_size (a [B] batch of whole, contiguous groups); return n_groups."""
    original = group_size
    try:  # Python, numpy and 0-dim torch integers; never bools or floats
        group_size = operator.index(group_size) if not isinstance(group_size, bool) else None
    except TypeError:
        group_size = None
    if group_size is None or group_size < min_size:
        raise ValueError(
            f"group_size must be an integer >= {min_size}, got {original!r}: "
            "group-relative methods compare several responses to the same prompt"
        )
    if n % group_size != 0:
        raise ValueError(
            f"batch of {n} responses is not a whole number of groups of {group_size}: "
            "sample group_size responses for every prompt and keep each group contiguous"
        )
    return n // group_size


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: str = "std",
    eps: float = 1e-6,
) -> torch.Tensor:
    r"""Advantages relative to the other responses of the same prompt.

    For the G = ``group_size`` responses of one prompt with rewards r_1..r_G:

        scale="std":  A_i = (r_i - \bar r) / (s + eps),
                      s = \sqrt{ \frac{1}{G-1} \sum_j (r_j - \bar r)^2 }     (sample std, Bessel)
        scale="none": A_i = r_i - \bar r                                     (Dr. GRPO)

    The sample (unbiased) std matches the common GRPO implementations (``torch.std`` default).
    A group whose rewards are all equal carries no learning signal: its advantages are exactly
    0 (never NaN, never rounding noise from the mean).

    Args:
        rewards: [B] with B = n_prompts * group_size, groups contiguous
            (responses 0..G-1 answer prompt 0, G..2G-1 prompt 1, ...).
        group_size: G >= 2.
        scale: "std" or "none".
        eps: added to the std so near-constant groups do not explode.

    Returns:
        [B] float tensor.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if scale not in ADV_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}: choose one of {', '.join(ADV_SCALES)}")
    n_groups = check_groups(rewards.shape[0], group_size)
    group_size = rewards.shape[0] // max(n_groups, 1)
    r = (rewards if rewards.is_floating_point() else rewards.float()).view(n_groups, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    constant = (r == r[:, :1]).all(dim=1, keepdim=True)
    centred = torch.where(constant, torch.zeros_like(centred), centred)
    if scale == "std":
        centred = centred / (r.std(dim=1, unbiased=True, keepdim=True) + eps)
    return centred.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] bool: True for the responses of groups whose rewards are not all equal (DAPO's dynamic
    sampling keeps only these: an all-equal group has zero advantage and no policy gradient)."""
    n_groups = check_groups(rewards.shape[0], group_size)
    r = rewards.view(n_groups, -1)
    return (r != r[:, :1]).any(dim=1).repeat_interleave(r.shape[1])


def _log_ratio(teacher_logp, old_logp, mask) -> torch.Tensor:
    """d_{it} = log pi_T(o_it) - log pi_old(o_it), detached, 0 at padding: [B, T]."""
    m = mask.bool()
    return torch.where(m, (teacher_logp - old_logp).detach(), torch.zeros_like(old_logp))


def per_token_kl_advantages(advantages, beta: float, teacher_logp, old_logp, mask, kd_weights=None) -> torch.Tensor:
    r"""KL in the reward, per token (third-party KDRL ports; the paper's own form is k2 in the loss, with the same
    on-policy gradient): added *after* group normalisation.

        A_{it} = A_i + \beta w_i d_{it},   d_{it} = \log\pi_T(o_{it}) - \log\pi_{old}(o_{it})

    Each token is pushed towards what the teacher would say at that point; the term is a
    constant for the optimiser (detached), like the reward itself.

    Args:
        advantages: [B] group advantages of the raw rewards; teacher_logp, old_logp, mask: [B, T];
        kd_weights: [B] (``losses.kd_mask``) or None for all ones; beta >= 0.

    Returns:
        [B, T] per-token advantages (0 at padding).
    """
    d = _log_ratio(teacher_logp, old_logp, mask)
    w = torch.ones_like(advantages, dtype=d.dtype) if kd_weights is None else kd_weights.to(d.dtype)
    adv = advantages.to(d.dtype).unsqueeze(-1) + beta * w.unsqueeze(-1) * d
    return torch.where(mask.bool(), adv, torch.zeros_like(adv))


def sequence_kl_rewards(rewards, beta: float, teacher_logp, old_logp, mask, kd_weights=None) -> torch.Tensor:
    r"""KL in the reward, sequence-sum variant: shaped rewards *before* group normalisation.

        r'_i = r_i + \beta w_i \sum_t d_{it}     (= r_i - \beta w_i \cdot k1 estimate of the sequence KL)

    then ``group_advantages(r')``. A variant, not the paper's form: in a group where every response fails
    (all r_i equal), the std scaling divides the shaped rewards' spread by itself, so beta
    cancels there and the KL term acts at full strength whatever its coefficient.

    Returns:
        [B] shaped rewards.
    """
    d = _log_ratio(teacher_logp, old_logp, mask)
    w = torch.ones_like(rewards, dtype=d.dtype) if kd_weights is None else kd_weights.to(d.dtype)
    return rewards.to(d.dtype) + beta * w * d.sum(-1)
