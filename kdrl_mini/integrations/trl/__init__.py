r"""KDRL on TRL: ``KDRLConfig(GRPOConfig)`` and ``KDRLTrainer(GRPOTrainer)``.

KDRL (arXiv 2506.02208) is GRPO plus beta * KL(student || teacher) on the student's own samples.
TRL already scales GRPO (accelerate: DDP, DeepSpeed, FSDP; vLLM generation); this module adds the
teacher and the KD term to it and nothing else:

- after TRL generates and rewards a batch, the frozen teacher scores the completions
  (``kdrl_mini.scoring.score_groups``: each group's prompt encoded once, when the process holds
  whole groups; otherwise ``score_in_micro_batches``), and the reward-guided KD weights are formed
  on the *global* rewards (``kdrl_mini.losses.kd_mask``), then sliced to this process;
- ``kl_mode="loss"``: TRL's own loss + beta * ``kdrl_mini.losses.reverse_kl_loss`` on the same
  per-token log-probs TRL computed (one student forward), aggregated with weights that reproduce
  TRL's normaliser for its ``loss_type`` exactly (so the sum is ``kdrl_mini.losses.kdrl_loss``);
- ``kl_mode="reward"``: the per-token alternative (the paper's form is the loss above), advantages A_i + beta * w_i * (log pi_T - log pi_old)
  from ``kdrl_mini.advantages.per_token_kl_advantages``, handed to TRL as [B, T] advantages.

TRL's reference-model KL (``beta``) is untouched and separate from ``kd_beta``. Metrics ``kd/kl``,
``kd/beta``, ``kd/frac`` (and ``kd/loss`` in loss mode) go through TRL's own logger.

The maths lives in :mod:`kdrl_mini.losses` / :mod:`kdrl_mini.advantages`; this file only moves tensors.

``pg_weight=0`` (with ``kd_beta=1``) switches TRL's policy-gradient loss off: KD-RKL, the reverse KL
on the student's own samples alone (on-policy distillation), so the paper's three arms run on TRL.

Its public API, as ``from trl import GRPOConfig`` is TRL's: ``from kdrl_mini.integrations.trl import
KDRLConfig, KDRLTrainer``. The other modules: :mod:`.rewards` (the reward functions,
``load_prompt_dataset``), :mod:`.launch` (``train_with_trl``; ``python -m kdrl_mini.integrations.trl``),
:mod:`.kit_run` (one run in the kit's run folder: ``metrics.jsonl``, evaluations, checkpoints and resume;
``kdrl-mini train --engine trl``).
"""

from .config import KDRLConfig
from .trainer import KDRLTrainer

__all__ = ["KDRLConfig", "KDRLTrainer"]
