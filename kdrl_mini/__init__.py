"""kdrl_mini: GRPO, knowledge distillation and KDRL as small, readable, tested functions."""

__version__ = "0.1.0"
