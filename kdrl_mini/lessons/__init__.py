"""Objects the notebooks teach with, outside the training path: toy distributions on a grid
(:mod:`.toy`) and an enumerable tabular policy for sequence-level KL (:mod:`.sequence_kl`)."""
