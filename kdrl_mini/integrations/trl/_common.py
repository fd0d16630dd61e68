"""TRL itself, imported once with a clear message when the ``[trl]`` extra is missing."""

try:
    from trl import GRPOConfig, GRPOTrainer
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("kdrl_mini.integrations.trl needs TRL: pip install 'kdrl_mini[trl]'") from err
