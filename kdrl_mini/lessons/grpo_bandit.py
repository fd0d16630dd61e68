r"""GRPO's expected gradient on one-token policies, by listing every group (notebook 01).

A "response" is one token v ~ p_theta = softmax(z) over V outcomes with reward r(v); K prompts each
have their own logits z_k and rewards r_k (shapes [K, V]). For each prompt GRPO samples a group of
G responses, forms advantages with ``group_advantages`` and follows

    g(o_1..o_G) = (1/G) \sum_i A_i \nabla_z \log p_\theta(o_i).

Its expectation is a sum over all V^G groups, so it can be compared with the true gradient of the
expected reward, \nabla_z E_p[r] = \sum_v p_v r_v \nabla_z \log p_v, with no sampling noise:

    scale="none" (the group-mean baseline, Dr. GRPO): E[g] = (G-1)/G \nabla E_p[r] exactly
                 (the mean includes the response itself, which removes 1/G of its own term);
    scale="std":  each group is divided by its own spread. With 0/1 rewards one prompt's expected
                 gradient still points along its true gradient, but with a factor that depends on
                 its success rate p_k, so prompts are reweighted by difficulty and the sum over
                 prompts is no longer a multiple of \sum_k \nabla E_{p_k}[r] (Dr. GRPO's critique).
Float64; V^G groups (V = 4, G = 8 is 65,536).
"""

from __future__ import annotations

import torch

from ..advantages import group_advantages
from .sequence_kl import all_sequences


def true_gradient(logits: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    r"""\nabla_z \sum_k E_{v ~ softmax(z_k)}[r_{kv}]: the shape of ``logits`` ([V] or [K, V])."""
    z = logits.detach().double().requires_grad_(True)
    (torch.softmax(z, -1) * rewards.double()).sum().backward()
    return z.grad


def expected_group_gradient(logits: torch.Tensor, rewards: torch.Tensor, group_size: int,
                            scale: str = "std") -> torch.Tensor:
    r"""E over groups of G responses of GRPO's gradient (1/G) \sum_i A_i \nabla \log p(o_i), summed
    over prompts: the shape of ``logits`` ([V] or [K, V])."""
    if logits.dim() == 2:
        return torch.stack([expected_group_gradient(z, r, group_size, scale) for z, r in zip(logits, rewards)])
    z = logits.detach().double().requires_grad_(True)
    groups = all_sequences(z.shape[0], group_size)                          # [V^G, G]
    logp = torch.log_softmax(z, -1)[groups]
    adv = group_advantages(rewards.double()[groups].reshape(-1), group_size, scale).view_as(logp)
    weight = logp.detach().sum(-1).exp()                                    # probability of the group
    (weight * (adv * logp).mean(-1)).sum().backward()
    return z.grad


def compare(logits: torch.Tensor, rewards: torch.Tensor, group_size: int) -> dict:
    """For both scalings: cosine between E[g] and the true gradient (all prompts' logits as one
    vector), the norm ratio |E g| / |true|, and per prompt the factor E[g_k].true_k / |true_k|^2.
    Python floats (factors: a list)."""
    true = true_gradient(logits, rewards)
    out = {}
    for scale in ("none", "std"):
        g = expected_group_gradient(logits, rewards, group_size, scale)
        rows = (g, true) if g.dim() == 2 else (g.unsqueeze(0), true.unsqueeze(0))
        factors = ((rows[0] * rows[1]).sum(-1) / rows[1].pow(2).sum(-1)).tolist()
        out[scale] = {"cosine": float(torch.nn.functional.cosine_similarity(g.flatten(), true.flatten(), 0)),
                      "norm_ratio": float(g.norm() / true.norm()), "factors": factors}
    return out
