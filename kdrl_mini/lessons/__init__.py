"""Objects the notebooks teach with, outside the training path: toy distributions on a grid (:mod:`.toy`),
an enumerable tabular policy for sequence-level KL (:mod:`.sequence_kl`) and for the prefix x direction grid
(:mod:`.distillation`, :mod:`.distillation_world`), GRPO's expected gradient on one-token policies
(:mod:`.grpo_bandit`), Hinton's soft targets (:mod:`.soft_targets`) and the sampler-learner gap (:mod:`.sampler_gap`)."""
