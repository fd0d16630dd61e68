"""Which trainer trains a run: the kit's own (:class:`kdrl_mini.trainer.Trainer`) or TRL's
GRPOTrainer with the teacher's KD term (:mod:`kdrl_mini.integrations.trl.kit_run`, the optional
``[trl]`` extra; GRPO, KD-RKL and KDRL, with vLLM for rollouts on a GPU when it is installed).
Both write the same run folder: ``config.yaml``, ``metrics.jsonl``, checkpoints, final weights."""

from __future__ import annotations

from .config import TrainConfig
from .trainer import Trainer

ENGINES = ("kit", "trl")


def train_run(cfg: TrainConfig, engine: str = "kit", resume: bool = False, overwrite: bool = False,
              progress: bool = True) -> list[dict]:
    """Train ``cfg`` into ``cfg.output_dir`` on ``engine``; returns the metric rows written."""
    if engine == "kit":
        return Trainer(cfg).train(resume=resume, overwrite=overwrite, progress=progress)
    if engine != "trl":
        raise ValueError(f"engine {engine!r}: choose one of {list(ENGINES)}")
    return trl_run()(cfg, resume=resume, overwrite=overwrite, progress=progress)


def check(cfg: TrainConfig, engine: str) -> None:
    """Refuse, before anything loads, a config ``engine`` does not train: for TRL, what
    :func:`kdrl_mini.integrations.trl.launch.config_from_train_config` refuses (a dry run says what the run would)."""
    if engine == "trl":
        trl_run()  # the [trl] extra is installed, or one line naming it
        from .integrations.trl.launch import config_from_train_config

        config_from_train_config(cfg)


def trl_run():
    """:func:`kdrl_mini.integrations.trl.kit_run.train_run`, or one line naming the extra to install."""
    try:  # TRL is an optional dependency
        from .integrations.trl.kit_run import train_run
    except ImportError as err:
        raise ValueError(f"--engine trl needs TRL: pip install 'kdrl_mini[trl]' ({err})") from err
    return train_run
