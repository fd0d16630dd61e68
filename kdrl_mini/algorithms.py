"""Each algorithm as one record: who samples, whether the teacher scores, how rewards are shaped, which
loss, which metrics apply. The trainer and the metrics read these fields, never algorithm names.

A new algorithm is its loss (in :mod:`kdrl_mini.losses`), an adapter here with the signature
``(rollout, logp, inputs) -> (loss, metrics)``, its :class:`Algorithm` record in :data:`ALGORITHMS`,
and a YAML file in ``kdrl_mini/configs``. The adapters read the step's values from
:class:`LossInputs` (this step's scheduled ``beta``, the per-token full-vocabulary KL, the clip and
aggregation settings), never from the whole config, whose ``beta`` is only the starting value.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch

from .advantages import per_token_kl_advantages
from .batch import Batch
from .kl import FULL_VOCAB_KINDS
from .losses import forward_kl_loss, grpo_loss, kdrl_loss, reverse_kl_loss


@dataclass(kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
class LossInputs:
    """What a loss adapter reads besides the rollout and the student's log-probs [B, T]."""

    beta: float                       # this step's scheduled KL coefficient (``schedules.annealed``)
    kl_kind: str                      # k1 / k2 / k3 / exact / topk
    kl_mode: str                      # KDRL: "loss", "reward" or "reward-seq"
    clip_eps: float
    clip_eps_high: float | None
    loss_agg: str
    max_len: int                      # max_new_tokens (the seq-mean-token-sum normaliser)
    ref_beta: float                   # GRPO's k3 KL to the reference; 0 = off
    kl_values: torch.Tensor | None = None  # [B, T] the token-chunked head's exact / top-k KL, else None

    @classmethod
    def of(cls, cfg) -> "LossInputs":
        """The run's fixed settings from a ``TrainConfig``; each step adds ``beta`` and ``kl_values``."""
        return cls(beta=cfg.beta, kl_kind=cfg.kl_kind, kl_mode=cfg.kl_mode, clip_eps=cfg.clip_eps,
                   clip_eps_high=cfg.clip_eps_high, loss_agg=cfg.loss_agg, max_len=cfg.max_new_tokens,
                   ref_beta=cfg.ref_beta)

    def at(self, beta: float, kl_values: torch.Tensor | None) -> "LossInputs":
        return replace(self, beta=beta, kl_values=kl_values if self.kl_kind in FULL_VOCAB_KINDS else None)


def _old(ro: Rollout, logp):  # one PPO epoch: pi_old = pi_theta, the ratio is exactly 1
    return logp.detach() if ro.old_logp is None else ro.old_logp


def _agg(ro, inp):  # every loss aggregates with the whole rollout's weights (micro-batch invariant)
    return {"loss_agg": inp.loss_agg, "max_len": inp.max_len, "weights": ro.weights}


def _clip(inp):
    return {"clip_eps": inp.clip_eps, "clip_eps_high": inp.clip_eps_high}


def grpo_step_loss(ro, logp, inp):
    loss, metrics = grpo_loss(logp, _old(ro, logp), ro.advantages, ro.mask, **_clip(inp), **_agg(ro, inp))
    if ro.ref_logp is None:
        return loss, metrics
    # GRPO's own KL term: + ref_beta * k3(pi_theta || pi_ref), the reference in the teacher's place
    ref, _ = reverse_kl_loss(logp, ro.ref_logp, ro.mask, kind="k3", **_agg(ro, inp))
    return loss + inp.ref_beta * ref, metrics


def kd_fkl_step_loss(ro, logp, inp):
    return forward_kl_loss(logp, ro.mask, **_agg(ro, inp))


def kd_rkl_step_loss(ro, logp, inp):
    return reverse_kl_loss(logp, ro.teacher_logp, ro.mask, kind=inp.kl_kind, kl_values=inp.kl_values, **_agg(ro, inp))


def kdrl_step_loss(ro, logp, inp):
    if inp.kl_mode == "reward":  # per-token form: A_i + beta * w_i * d_t, then GRPO
        adv = per_token_kl_advantages(ro.advantages, beta=inp.beta, teacher_logp=ro.teacher_logp,
                                      old_logp=_old(ro, logp), mask=ro.mask, kd_weights=ro.kd_weights)
        return grpo_step_loss(replace(ro, advantages=adv), logp, inp)
    if inp.kl_mode == "reward-seq":  # already folded into ro.advantages by Trainer.collect()
        return grpo_step_loss(ro, logp, inp)
    return kdrl_loss(logp, _old(ro, logp), ro.advantages, ro.mask, teacher_logp=ro.teacher_logp, beta=inp.beta,
                     kl_kind=inp.kl_kind, kd_weights=ro.kd_weights, kl_values=inp.kl_values, **_clip(inp),
                     **_agg(ro, inp))


@dataclass(frozen=True, kw_only=True)
class Algorithm:
    """What one algorithm does in a step. Config fields that only some algorithms honour (dynamic
    sampling, the reference KL, reward-guided KD, ...) are honoured where the record says so."""

    name: str
    loss: Callable                    # (Rollout, logp [B, T], LossInputs) -> (loss, metrics)
    teacher_samples: bool = False     # rollouts come from the teacher (off-policy KD), not the student
    teacher_scores: bool = False      # the teacher's log-probs of the rollouts enter the loss
    rewarded: bool = False            # learns from rewards: advantages, overlong shaping and filtering
    drops_flat_groups: bool = False   # dynamic sampling may drop all-equal groups (nothing else learns from them)
    reference_kl: bool = False        # ref_beta's k3 KL to the initial student applies
    kd_mask: bool = False             # reward-guided KD (kd_strategy) chooses which responses are distilled
    kl_in_reward: bool = False        # kl_mode may fold the KD term into the reward
    logs_beta: bool = False           # beta and kd_frac are this algorithm's metrics
    on_trl: bool = False              # --engine trl runs it too (kdrl_mini.integrations.trl.kit_run)


ALGORITHMS = {a.name: a for a in (
    Algorithm(name="grpo", loss=grpo_step_loss, rewarded=True, drops_flat_groups=True, reference_kl=True, on_trl=True),
    Algorithm(name="kd-fkl", loss=kd_fkl_step_loss, teacher_samples=True),
    Algorithm(name="kd-rkl", loss=kd_rkl_step_loss, teacher_scores=True, on_trl=True),
    Algorithm(name="kdrl", loss=kdrl_step_loss, teacher_scores=True, rewarded=True, kd_mask=True,
              kl_in_reward=True, logs_beta=True, on_trl=True),
)}
"""The algorithms of one stage; ``kd-then-grpo`` (``TrainConfig.algorithm_at``) chains two of them."""
