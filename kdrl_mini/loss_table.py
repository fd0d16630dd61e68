"""The four losses of the trainer behind one signature, and the :class:`Rollout` record they read.

Every entry of :data:`LOSSES` is ``(rollout, logp, loss_kl, cfg, beta) -> (loss, metrics)``: the
trainer picks one by ``cfg.algorithm`` (per step: ``kd-then-grpo`` switches from KD to GRPO) and
never branches on the algorithm itself. Each adapter only reads the rollout and the config and
calls a loss of :mod:`kdrl_mini.losses` (or folds the KL into the advantages first, with
:mod:`kdrl_mini.advantages`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .advantages import per_token_kl_advantages
from .batch import Batch
from .losses import forward_kl_loss, grpo_loss, kdrl_loss, reverse_kl_loss


@dataclass
class Rollout:
    """Everything a step learns from, collected once, on the model's device.

    batch (ids [B, P+T], mask [B, T], texts); rewards, correct, advantages, kd_weights: [B];
    weights: [B, T] aggregation weights of the whole rollout (``losses.token_weights``);
    old_logp, teacher_logp: [B, T] or None; teacher_hidden: [B, T, H_T], the teacher's final hidden
    states, or None (exact/top-k KL and the logged exact KL rebuild its logits from them, a chunk of
    tokens at a time: ``scoring.head_token_stats``);
    ref_logp: [B, T] under the reference (GRPO's KL term, ``ref_beta``) or None.
    """

    batch: Batch
    rewards: torch.Tensor
    correct: torch.Tensor
    advantages: torch.Tensor
    kd_weights: torch.Tensor
    weights: torch.Tensor
    old_logp: torch.Tensor | None = None
    teacher_logp: torch.Tensor | None = None
    teacher_hidden: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.completion_mask

    def rows(self, sl: slice) -> "Rollout":
        """A micro-batch: the sequences ``sl`` of every field."""
        take = lambda v: v.rows(sl) if isinstance(v, Batch) else (None if v is None else v[sl])  # noqa: E731
        return Rollout(**{f.name: take(getattr(self, f.name)) for f in fields(self)})


def _old(ro: Rollout, logp):  # one PPO epoch: pi_old = pi_theta, the ratio is exactly 1
    return logp.detach() if ro.old_logp is None else ro.old_logp


def _agg(ro, cfg):  # every loss aggregates with the whole rollout's weights (micro-batch invariant)
    return {"loss_agg": cfg.loss_agg, "max_len": cfg.max_new_tokens, "weights": ro.weights}


def _clip(cfg):
    return {"clip_eps": cfg.clip_eps, "clip_eps_high": cfg.clip_eps_high}


def _kl(ro, loss_kl, cfg):  # exact / top-k: the per-token KL the token-chunked head computed (else None)
    return {"kl_values": loss_kl if cfg.kl_kind in ("exact", "topk") else None}


def grpo_step_loss(ro, logp, loss_kl, cfg, beta):
    loss, metrics = grpo_loss(logp, _old(ro, logp), ro.advantages, ro.mask, **_clip(cfg), **_agg(ro, cfg))
    if ro.ref_logp is None:
        return loss, metrics
    # GRPO's own KL term: + ref_beta * k3(pi_theta || pi_ref), the reference in the teacher's place
    ref, _ = reverse_kl_loss(logp, ro.ref_logp, ro.mask, kind="k3", **_agg(ro, cfg))
    return loss + cfg.ref_beta * ref, metrics


def kd_fkl_step_loss(ro, logp, loss_kl, cfg, beta):
    return forward_kl_loss(logp, ro.mask, **_agg(ro, cfg))


def kd_rkl_step_loss(ro, logp, loss_kl, cfg, beta):
    return reverse_kl_loss(logp, ro.teacher_logp, ro.mask, kind=cfg.kl_kind, **_kl(ro, loss_kl, cfg), **_agg(ro, cfg))


def kdrl_step_loss(ro, logp, loss_kl, cfg, beta):
    if cfg.kl_mode == "reward":  # per-token form: A_i + beta * w_i * d_t, then GRPO
        adv = per_token_kl_advantages(ro.advantages, beta=beta, teacher_logp=ro.teacher_logp,
                                      old_logp=_old(ro, logp), mask=ro.mask, kd_weights=ro.kd_weights)
        return grpo_step_loss(Rollout(**{**vars(ro), "advantages": adv}), logp, loss_kl, cfg, beta)
    if cfg.kl_mode == "reward-seq":  # already folded into ro.advantages by Trainer.collect()
        return grpo_step_loss(ro, logp, loss_kl, cfg, beta)
    return kdrl_loss(logp, _old(ro, logp), ro.advantages, ro.mask, teacher_logp=ro.teacher_logp, beta=beta,
                     kl_kind=cfg.kl_kind, kd_weights=ro.kd_weights, **_clip(cfg), **_kl(ro, loss_kl, cfg), **_agg(ro, cfg))


LOSSES = {"grpo": grpo_step_loss, "kd-fkl": kd_fkl_step_loss, "kd-rkl": kd_rkl_step_loss, "kdrl": kdrl_step_loss}
