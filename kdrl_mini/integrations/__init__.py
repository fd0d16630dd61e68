"""Bridges from kdrl_mini's maths to other training engines.

- :mod:`kdrl_mini.integrations.trl`: ``KDRLConfig`` / ``KDRLTrainer``, KDRL as a subclass of TRL's
  ``GRPOTrainer`` (install the ``[trl]`` extra). Scales with ``accelerate launch``; see docs/scaling.md.

Nothing here is imported by ``import kdrl_mini``: the kit itself never needs TRL.
"""
