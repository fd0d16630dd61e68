"""``python -m kdrl_mini.integrations.trl``: train the tiny world through KDRLTrainer (one process per rank)."""

from .launch import run

run()
