"""The ``train`` and ``eval`` commands of the CLI: one run trained from a config, or a trained run evaluated."""

from __future__ import annotations

from pathlib import Path

from . import engines
from .config import TrainConfig, load_config
from .runs import checkpoints, folder
from .runs.loading import load_world
from .runs.metrics import is_eval
from .trainer import Trainer


def train(config: str | TrainConfig, overrides: dict, resume: bool = False, overwrite: bool = False,
          engine: str = "kit") -> int:
    """``kdrl-mini train``: train ``config`` (a shipped name, a YAML file or a preset's TrainConfig) with
    ``overrides`` on ``engine`` (the kit's trainer, or TRL's: :mod:`kdrl_mini.engines`); print the last
    evaluation. A None in ``overrides`` (``--set key=null``) unsets that field, from a file as from a preset."""
    cfg = with_overrides(config, overrides)
    folder.check(cfg.output_dir, resume, overwrite)  # before any model loads
    log = engines.train_run(cfg, engine, resume=resume, overwrite=overwrite)
    evals = [row for row in log if is_eval(row)]
    last = evals[-1]["step"] if evals else None
    for e in (row for row in evals if row["step"] == last):
        print(f"{e['split']:>5}: accuracy {e['eval_accuracy']:.3f}  length {e['eval_length']:.1f}")
    print(f"metrics: {Path(cfg.output_dir) / 'metrics.jsonl'}" + (" (trained through TRL)" if engine == "trl" else ""))
    return 0


def with_overrides(config: str | TrainConfig, overrides: dict) -> TrainConfig:
    """``config`` (a shipped name, a YAML file or a TrainConfig) with ``overrides`` applied; a None value
    sets that field to null (``load_config`` alone skips None, which its callers use for "not given")."""
    if isinstance(config, TrainConfig):
        return config.replace(**overrides)
    return load_config(config, **overrides).replace(**{k: v for k, v in overrides.items() if v is None})


def evaluate(run: str | None = None, student: str | None = None, teacher: str | None = None, split: str = "all",
             n: int | None = None) -> int:
    """``kdrl-mini eval``: greedy accuracy of a trained run folder (``run``) or a model folder (``student``)."""
    if run:
        run = Path(run)
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"{run} is not a run folder (no config.yaml); pass the --output-dir of a train run")
        cfg = load_config(run / "config.yaml")
    else:
        cfg = TrainConfig(student_path=student, teacher_path=teacher or student)
    world = load_world(cfg)
    if run:
        load_trained_weights(world, run)
    trainer = Trainer(cfg, world)
    splits = trainer.eval_splits if split == "all" else (split,)
    for name in splits:
        r = trainer.evaluate(name, n)
        print(f"{name:>5}: accuracy {r['eval_accuracy']:.3f}  length {r['eval_length']:.1f}  (n={n or cfg.eval_size})")
    return 0


def load_trained_weights(world, run: Path) -> None:
    """Put a finished run's trainable weights (adapter or full) into the freshly loaded student."""
    ckpt = run / "checkpoint.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint.pt in {run}; the run may not have reached its first checkpoint")
    checkpoints.load_trainable(world.student, checkpoints.load(ckpt)["trainable"], ckpt)
