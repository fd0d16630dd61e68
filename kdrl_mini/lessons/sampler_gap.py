r"""The sampler is not the learner (notebook 07c).

A rollout is drawn from a *sampler* mu (the kit's merged fp32 copy of a 4-bit LoRA student, an
inference engine such as vLLM, a copy a few updates old) while the gradient is taken through the
*learner* pi_theta. The policy gradient wants samples from pi; with samples from mu

    E_pi[f(y)] = E_mu[w(y) f(y)],   w(y) = pi(y) / mu(y) = exp(sum_t log pi(y_t|.) - log mu(y_t|.)).

This module measures the gap (:func:`gap_stats`), builds low-precision and stale samplers
(:func:`low_precision_copy`, :func:`stale_copies`), forms the importance weights with TRL 1.16's
four ``vllm_importance_sampling_mode`` rules (:func:`importance_weights`), and gives the exact
bias and variance of each rule on a one-token policy (:func:`bandit_estimator`).

Shapes: logp, sampler_logp, mask [B, T] (mask 1 = response token); bandit logits [V].
"""

from __future__ import annotations

import copy

import torch

from ..kl import kl_estimate
from ..rollout import teacher_forced_batch
from ..sampling_copy import MergedCopy
from ..scoring import token_logprobs

IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
BANDIT_MODES = ("none", "is", "truncate", "mask")


# ---------------------------------------------------------------- samplers
def low_precision_copy(model, dtype: torch.dtype = torch.bfloat16):
    """A frozen copy of ``model`` in ``dtype``: a stand-in for an inference engine computing in bf16/fp16."""
    return copy.deepcopy(model).to(dtype).eval().requires_grad_(False)


def sft_step(student, optimiser, tokenizer, rows: list[dict]) -> float:
    """One optimiser step of SFT on the rows' ``solution`` (mean token NLL); returns the loss."""
    batch = teacher_forced_batch(tokenizer, [r["prompt"] for r in rows], [r["solution"] for r in rows],
                                 next(student.parameters()).device)
    student.train()
    optimiser.zero_grad()
    loss = -(token_logprobs(student, batch) * batch.completion_mask).sum() / batch.completion_mask.sum()
    loss.backward()
    optimiser.step()
    return float(loss.detach())


def stale_copies(student, tokenizer, rows: list[dict], steps: int, keep=(1, 4), lr: float = 1e-4,
                 per_step: int = 8) -> dict[int, torch.nn.Module]:
    """Train ``student`` (LoRA) for ``steps`` SFT steps of ``per_step`` rows; return {k: an fp32 copy of its
    weights k updates before the end} for k in ``keep`` (each k <= steps): samplers that lag the learner."""
    if any(k > steps or k < 1 for k in keep):
        raise ValueError(f"every staleness in keep={keep} must be between 1 and steps={steps}")
    params = [p for p in student.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    copies = {}
    for i in range(steps):
        if steps - i in keep:
            copies[steps - i] = MergedCopy(student).model
        sft_step(student, optimiser, tokenizer, rows[i * per_step:(i + 1) * per_step])
    return dict(sorted(copies.items()))


@torch.no_grad()
def score(model, batch) -> torch.Tensor:
    """Log-probs [B, T] of the batch's completion tokens under ``model``, as float32, no gradient."""
    return token_logprobs(model, batch).float()


# ---------------------------------------------------------------- the gap
def gap_stats(logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2,
              clip_max: float = 3.0) -> dict:
    r"""How far the learner's log-probs are from the sampler's on the sampled tokens.

    d_t = log pi(y_t) - log mu(y_t); per token: mean |d|, max |d| and the share of tokens whose ratio
    exp(d_t) leaves PPO's band [1 - eps, 1 + eps] (what ``clip_frac`` would be at the first update if
    the sampler's log-probs were used as pi_old); per sequence: s = sum_t d_t, its range and the
    share of responses with exp(s) > ``clip_max`` (masked by TRL's default ``sequence_mask``)."""
    m = mask.bool()
    d = (logp - sampler_logp).masked_fill(~m, 0.0)
    tok, seq = d[m], d.sum(-1)
    ratio = tok.exp()
    return {"tokens": int(m.sum()), "mean_abs": float(tok.abs().mean()), "max_abs": float(tok.abs().max()),
            "outside_clip": float(((ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)).float().mean()),
            "seq_min": float(seq.min()), "seq_max": float(seq.max()),
            "seq_masked": float((seq.exp() > clip_max).float().mean())}


def kl_with_sampler(logp: torch.Tensor, sampler_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                    kind: str = "k3") -> tuple[float, float]:
    """Mean per-token ``kind`` estimate of KL(pi || ref) on the rollout, with the learner's log-probs and
    with the sampler's in their place: (learner, sampler)."""
    mean = lambda x: float((x * mask).sum() / mask.sum())  # noqa: E731
    return mean(kl_estimate(logp, ref_logp, kind)), mean(kl_estimate(sampler_logp, ref_logp, kind))


# ---------------------------------------------------------------- corrections, as TRL 1.16 forms them
def importance_weights(logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                       mode: str = "sequence_mask", clip_min: float | None = None,
                       clip_max: float | None = 3.0) -> torch.Tensor:
    r"""Detached importance weights for a loss computed on the sampler's rollout (TRL's
    ``vllm_importance_sampling_mode``; its defaults: ``sequence_mask``, C_min None, C_max 3).

        token_*:    w_t = exp(log pi(y_t) - log mu(y_t))                    [B, T]
        sequence_*: w   = exp(sum_t log pi(y_t) - log mu(y_t))  per response  [B, 1]
        *_truncate: w <- clamp(w, C_min, C_max)        (truncated IS: bias for bounded variance)
        *_mask:     w <- 0 where w < C_min or w > C_max (the sample leaves the loss)

    TRL multiplies its per-token policy loss by these weights; padding positions count 0."""
    if mode not in IS_MODES:
        raise ValueError(f"unknown importance-sampling mode {mode!r}: choose one of {', '.join(IS_MODES)}")
    if mode.endswith("truncate") and clip_min is None and clip_max is None:
        raise ValueError(f"mode {mode!r} needs clip_min or clip_max: without a bound there is nothing to truncate")
    d = ((logp - sampler_logp) * mask).detach()
    w = (d.sum(-1, keepdim=True) if mode.startswith("sequence") else d).exp()
    lo = -float("inf") if clip_min is None else clip_min
    hi = float("inf") if clip_max is None else clip_max
    if mode.endswith("truncate"):
        return w.clamp(min=lo, max=hi)
    return w.masked_fill((w < lo) | (w > hi), 0.0)


# ---------------------------------------------------------------- exact, on a one-token policy
def bandit_estimator(logits: torch.Tensor, sampler_logits: torch.Tensor, reward: torch.Tensor,
                     mode: str = "none", cap: float = 3.0) -> dict:
    r"""Exact bias and variance of a one-sample policy gradient on a one-token policy pi = softmax(z)
    ([V]) when the token is drawn from mu = softmax(``sampler_logits``):

        g(a) = w(a) r(a) (e_a - pi),   a ~ mu,   target g* = \nabla_z E_pi[r] = E_pi[r (e_a - pi)]

    with w = 1 (``none``: the mismatch ignored), pi/mu (``is``), min(pi/mu, cap) (``truncate``) or
    pi/mu if pi/mu <= cap else 0 (``mask``); token and sequence rules coincide for one token.
    Returns the expected gradient, g*, the relative bias |E g - g*| / |g*| and the relative
    one-sample variance E|g - E g|^2 / |g*|^2. Float64, sums over the vocabulary: no sampling."""
    if mode not in BANDIT_MODES:
        raise ValueError(f"unknown bandit mode {mode!r}: choose one of {', '.join(BANDIT_MODES)}")
    pi, mu = torch.softmax(logits.double(), -1), torch.softmax(sampler_logits.double(), -1)
    ratio = pi / mu
    w = {"none": torch.ones_like(ratio), "is": ratio, "truncate": ratio.clamp(max=cap),
         "mask": ratio.masked_fill(ratio > cap, 0.0)}[mode]
    score_fn = torch.eye(len(pi), dtype=pi.dtype) - pi          # row a: e_a - pi = \nabla_z log pi(a)
    g = (w * reward.double()).unsqueeze(-1) * score_fn          # [V, V]: the gradient if token a is drawn
    expected = (mu.unsqueeze(-1) * g).sum(0)
    target = (pi.unsqueeze(-1) * reward.double().unsqueeze(-1) * score_fn).sum(0)
    norm2 = target.pow(2).sum()
    variance = (mu * (g - expected).pow(2).sum(-1)).sum() / norm2
    return {"expected": expected, "target": target, "bias": float((expected - target).norm() / norm2.sqrt()),
            "variance": float(variance)}
