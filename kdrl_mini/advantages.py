"""Group-relative advantages (GRPO): each response is judged against its siblings."""

import torch

ADV_SCALES = ("std", "none")


def check_groups(n: int, group_size: int, min_size: int = 2) -> int:
    """Check n = n_groups * group_size (a [B] batch of whole, contiguous groups); return n_groups."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < min_size:
        raise ValueError(
            f"group_size must be an integer >= {min_size}, got {group_size!r}: "
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
    r = (rewards if rewards.is_floating_point() else rewards.float()).view(n_groups, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    constant = (r == r[:, :1]).all(dim=1, keepdim=True)
    centred = torch.where(constant, torch.zeros_like(centred), centred)
    if scale == "std":
        centred = centred / (r.std(dim=1, unbiased=True, keepdim=True) + eps)
    return centred.reshape(-1)
