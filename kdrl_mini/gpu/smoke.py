"""``kdrl-mini smoke --preset NAME``: the first run on a card, in one command.

Two short steps of every algorithm on the preset (its models, data and settings; ``--set`` changes
any field) on the preset's engine (the kit's trainer, or TRL's for GRPO, KD-RKL and KDRL), then one
small greedy evaluation, measuring each phase's time and peak memory (CUDA's
allocated peak; on a Linux CPU the process's resident peak) and printing them next to the estimate
of :mod:`kdrl_mini.gpu.memory`. Writes ``smoke.json`` in the output folder. The estimate's phases
include what is always held (weights, context), so measured and estimated peaks compare directly.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path

import torch

from .. import engines
from ..config import ALGORITHMS, TRL_ALGORITHMS
from ..runs.loading import load_student_for, load_world
from ..trainer import Trainer
from . import memory as me
from .preset_study import memory_check
from .presets import estimate_preset, load_preset

LAP_PHASE = {"rollout": "generate", "teacher": "teacher", "train": "train"}
EVAL_ROWS = 8


def smoke(name: str, overrides: dict | None = None, output_dir: str | None = None, steps: int = 2,
          algorithms: tuple[str, ...] | None = None, engine: str | None = None, say=print) -> dict:
    """Run ``steps`` steps of each algorithm of preset ``name`` on its engine (or ``engine``) and one
    evaluation of ``EVAL_ROWS`` rows; return (and write to ``<output_dir>/smoke.json``) the measured times
    and peaks with the estimate."""
    cfg, info = load_preset(name)
    cfg = cfg.replace(**(overrides or {}))  # null unsets a field here (e.g. dataset=null for local data)
    out = Path(output_dir or f"runs/smoke-{name}")
    cfg = cfg.replace(max_steps=steps, eval_every=0, checkpoint_every=0, eval_size=min(cfg.eval_size, EVAL_ROWS),
                      final_eval_size=min(cfg.eval_size, EVAL_ROWS))
    est, _ = estimate_preset(cfg, info)
    say(memory_check(name, est, cfg))
    engine = engine or info.engine
    report = {"preset": name, "engine": engine, "runs": {},
              "estimate": {"always": est.always, "phases": est.phases, "total": est.total,
                           "step_seconds": est.step_seconds}}
    runs = _trl_runs if engine == "trl" else _kit_runs
    for algorithm, run in runs(cfg, out, steps, algorithms or (TRL_ALGORITHMS if engine == "trl" else ALGORITHMS)):
        report["runs"][algorithm] = run
        say(_lines(algorithm, run, est))
    out.mkdir(parents=True, exist_ok=True)
    (out / "smoke.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    say(f"measured times and peaks: {out / 'smoke.json'} (put them in the preset's about.measured block)")
    return report


def _trl_runs(cfg, out: Path, steps: int, algorithms):
    """(algorithm, measurements) of each algorithm trained through TRL (:mod:`kdrl_mini.engines`); the
    evaluation is the kit's own greedy one inside the run, whose time and peak are not split out here."""
    train_run = engines.trl_run()
    for algorithm in algorithms:
        measured = []
        rows = train_run(cfg.replace(algorithm=algorithm, output_dir=str(out / algorithm)), overwrite=True,
                         progress=False, measured=measured)
        train = [r for r in rows if r["kind"] == "train"]
        evals = [r for r in rows if r["kind"] == "eval"]
        yield algorithm, {
            "steps": [{"step": r["step"], "seconds": m["seconds"], "loss": r["loss"], "skipped": 0.0, "laps": m["laps"],
                       "peaks": {LAP_PHASE[k]: v for k, v in m["peaks"].items()}} for r, m in zip(train, measured)],
            "eval": {"split": evals[0]["split"] if evals else None, "seconds": None, "peak": None,
                     "accuracy": evals[0]["eval_accuracy"] if evals else None}}


def _kit_runs(cfg, out: Path, steps: int, algorithms):
    """(algorithm, measurements) of each algorithm on the kit's trainer; teacher and data loaded once."""
    world = load_world(cfg)
    vocab = getattr(world.student, "kdrl_vocab", None)
    for i, algorithm in enumerate(algorithms):
        run_cfg = cfg.replace(algorithm=algorithm, output_dir=str(out / algorithm))
        if i:  # a fresh student per algorithm; the teacher and data are shared
            world = dataclasses.replace(world, student=None)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            world = dataclasses.replace(world, student=load_student_for(run_cfg, vocab))
        trainer = Trainer(run_cfg, world)
        trainer.track_memory = True
        rows = []
        for _ in range(steps):
            row = trainer.train_step()
            rows.append({"step": trainer.step, "seconds": row["step_time"], "loss": row["loss"],
                         "skipped": row["skipped"], "laps": dict(trainer.laps.laps),
                         "peaks": {LAP_PHASE[k]: v for k, v in trainer.laps.peaks.items()}})
        yield algorithm, {"steps": rows, "eval": _measured_eval(trainer)}
        world = trainer.world


def _measured_eval(trainer) -> dict:
    laps = type(trainer.laps)(trainer.device, track_memory=True)
    split = trainer.world.eval_splits[0]
    row = trainer.evaluate(split, EVAL_ROWS)
    laps("eval")
    return {"split": split, "seconds": laps.laps["eval"], "peak": laps.peaks.get("eval"),
            "accuracy": row.get("eval_accuracy")}


def _lines(algorithm: str, run: dict, est: me.MemoryEstimate) -> str:
    gib = lambda b: "n/a" if b is None else f"{b / me.GiB:.2f}"  # noqa: E731
    out = [f"{algorithm}: step seconds " + ", ".join(f"{r['seconds']:.1f}" for r in run["steps"])
           + (f" (estimate {est.step_seconds:.0f})" if est.step_seconds == est.step_seconds else "")]
    last = run["steps"][-1]["peaks"]
    for phase in me.PHASES:
        measured = run["eval"]["peak"] if phase == "eval" else last.get(phase)
        out.append(f"  {phase:<9} peak {gib(measured):>6} GiB measured, {gib(est.always + est.phases[phase]):>6} "
                   f"GiB estimated")
    return "\n".join(out)
