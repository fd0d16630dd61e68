"""Running many (variant, seed) trainings into one study folder, resumably and by several workers.

``run_study`` trains every (variant, seed) pair into ``out_dir/runs/<variant>/seed<k>``; a
finished run (``final.json`` present) is skipped and an interrupted one resumes from its
checkpoint, so a study is resumable; a run another live worker holds is left to it, so two
processes can share one study (one per core). A run whose ``final.json`` went missing while its
``metrics.jsonl`` is whole is summarised again, never retrained (that would replace its metrics).
``collect`` reads the finished runs back. The brief comparison (:mod:`.brief`), the pre-registered
study (:mod:`.v4`) and the preset study (:mod:`kdrl_mini.gpu.preset_study`) all run through here.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from tqdm import tqdm

from .. import engines
from ..config import TrainConfig
from ..runs.folder import config_changes, latest_checkpoint, read_mapping, remove_checkpoints, take_pid_file
from ..runs.loading import load_student_for
from ..runs.metrics import read_metrics
from ..trainer import Trainer


def run_study(out_dir: str | Path, plan: dict[str, dict], seeds: list[int] | dict[str, list[int]], base: TrainConfig,
              summarize, progress: bool = True, step_progress: bool = False, engine: str = "kit",
              seed_major: bool = False) -> list[dict]:
    """Train every (variant, seed); skip finished runs, resume interrupted ones.

    ``seeds`` is one list for every variant or a dict variant -> its seeds; ``summarize(run_dir)``
    gives the numbers written to each finished run's ``final.json``; ``step_progress`` adds each
    run's own step bar (long GPU runs); ``engine`` is the trainer (:mod:`kdrl_mini.engines`; the
    kit's reuses the loaded teacher and data from run to run); ``seed_major`` trains seed by seed across
    the arms instead of arm by arm."""
    out_dir = Path(out_dir)
    per = seeds if isinstance(seeds, dict) else {name: seeds for name in plan}
    jobs = [(name, seed) for name in plan for seed in per[name]]
    if seed_major:  # every arm's seed 1, then every arm's seed 2, ...: a partial study holds complete pairs
        jobs.sort(key=lambda job: job[1])
    records = []
    world = None
    finished = sum((out_dir / "runs" / n / f"seed{k}" / "final.json").exists() for n, k in jobs)
    with tqdm(total=len(jobs), initial=finished, desc="study", disable=not progress) as bar:  # rate of new runs only
        for name, seed in jobs:
            run = out_dir / "runs" / name / f"seed{seed}"
            cfg = base.replace(seed=seed, output_dir=str(run), **plan[name])
            cfg.validate()
            if (run / "final.json").exists():
                _check_same_config(run, cfg)
            elif not _take(run):  # another worker of this study is training it
                continue
            else:
                bar.set_postfix(run=f"{name}/seed{seed}")
                try:
                    world = _finish(run, cfg, {"variant": name, "seed": seed}, summarize, world, engine, step_progress)
                finally:
                    (run / WORKER_FILE).unlink(missing_ok=True)
                bar.update()
            records.append(read_mapping(run / "final.json", REBUILD))
    return records


def _finish(run: Path, cfg: TrainConfig, key: dict, summarize, world, engine: str, step_progress: bool):
    """Bring ``run`` to its ``final.json`` (``key`` and ``summarize(run)``): train it, resuming from its
    checkpoint, or only summarise it when its ``metrics.jsonl`` is whole already; then drop its weights.
    Returns the kit's loaded world, reused by the next run."""
    if not _trained(run, cfg):  # a run whose final.json went missing is summarised again, never retrained
        resume = latest_checkpoint(run) is not None  # killed before its first checkpoint: start over
        if engine == "kit":
            trainer = Trainer(cfg, world=_fresh_student(world, cfg))
            world = trainer.world
            trainer.train(resume=resume, overwrite=not resume, progress=step_progress)
        else:
            engines.train_run(cfg, engine, resume=resume, overwrite=not resume, progress=step_progress)
    (run / "final.json").write_text(json.dumps({**key, **summarize(run)}, indent=1))
    remove_checkpoints(run)  # the study keeps metrics, not weights
    (run / "trainable.pt").unlink(missing_ok=True)
    shutil.rmtree(run / "adapter", ignore_errors=True)
    return world


def _trained(run: Path, cfg: TrainConfig) -> bool:
    """Does ``run`` (no ``final.json``) hold a whole run already: training rows up to ``max_steps`` and, for
    every split it evaluated, the evaluation after the last step? Then only ``final.json`` is missing. A
    run that logged past a checkpoint it no longer has is refused: starting it over would replace its
    ``metrics.jsonl``."""
    if not (run / "metrics.jsonl").is_file():
        return False
    steps, evals = read_metrics(run)
    last = max((r["step"] for r in steps), default=0)
    if last == cfg.max_steps and {e["split"] for e in evals} <= {e["split"] for e in evals if e["step"] == last}:
        _check_same_config(run, cfg)
        return True
    if latest_checkpoint(run) is None and cfg.checkpoint_every and last >= cfg.checkpoint_every:
        raise ValueError(f"{run}: metrics.jsonl reaches step {last} of {cfg.max_steps} but the checkpoint to resume "
                         f"from and final.json are gone; restore them (e.g. git checkout) or delete the run folder to "
                         f"train it again")
    return False


WORKER_FILE = ".study-worker"  # the pid of the study process training this run


def _take(run: Path) -> bool:
    """Claim ``run`` for this process, so that several ``reproduce --full`` workers can share one
    study (one per free core): False when a live process holds it, True once this one does (a
    claim left by a process that is gone is taken over)."""
    run.mkdir(parents=True, exist_ok=True)
    return take_pid_file(run / WORKER_FILE) == 0


def _check_same_config(run: Path, cfg: TrainConfig) -> None:
    """A finished run is reused only if it was trained with the config asked for now."""
    changed = config_changes(run, cfg, ignore={"output_dir", "threads", "device"})
    if changed:
        raise ValueError(f"{run} holds a finished run with other settings for {changed}; use another --output-dir "
                         f"for this study, or delete that run folder to train it again")


def _fresh_student(world, cfg: TrainConfig):
    """Reuse the loaded teacher, tokenizer and data; load a new student for every run."""
    vocab = None if world is None else getattr(world.student, "kdrl_vocab", None)  # the same logit columns
    return None if world is None else dataclasses.replace(world, student=load_student_for(cfg, vocab))


REBUILD = "delete it and rerun the study's command: it writes final.json again from metrics.jsonl, without training"


def collect(out_dir: str | Path) -> list[dict]:
    """Every ``final.json`` under ``out_dir/runs`` (sorted by variant, seed)."""
    return [read_mapping(f, REBUILD) for f in sorted(Path(out_dir).glob("runs/*/seed*/final.json"))]
