"""``kdrl-mini smoke --preset NAME``: the first run on a card, in one command.

Two short steps of every algorithm on the preset (its models, data and settings; ``--set`` changes
any field), then one small greedy evaluation, measuring each phase's time and peak memory (CUDA's
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

from ..config import ALGORITHMS
from ..runs.loading import load_student_for, load_world
from ..trainer import Trainer
from . import memory as me
from .preset_study import memory_check
from .presets import estimate_preset, load_preset

LAP_PHASE = {"rollout": "generate", "teacher": "teacher", "train": "train"}
EVAL_ROWS = 8


def smoke(name: str, overrides: dict | None = None, output_dir: str | None = None, steps: int = 2,
          algorithms: tuple[str, ...] = ALGORITHMS, say=print) -> dict:
    """Run ``steps`` steps of each algorithm of preset ``name`` and one evaluation of ``EVAL_ROWS`` rows;
    return (and write to ``<output_dir>/smoke.json``) the measured times and peaks with the estimate."""
    cfg, info = load_preset(name)
    cfg = cfg.replace(**(overrides or {}))  # null unsets a field here (e.g. dataset=null for local data)
    out = Path(output_dir or f"runs/smoke-{name}")
    cfg = cfg.replace(max_steps=steps, eval_every=0, checkpoint_every=0, eval_size=min(cfg.eval_size, EVAL_ROWS))
    est, _ = estimate_preset(cfg, info)
    say(memory_check(name, est, cfg))
    world = load_world(cfg)
    vocab = getattr(world.student, "kdrl_vocab", None)
    report = {"preset": name, "estimate": {"always": est.always, "phases": est.phases, "total": est.total,
                                           "step_seconds": est.step_seconds}, "runs": {}}
    for algorithm in algorithms:
        run_cfg = cfg.replace(algorithm=algorithm, output_dir=str(out / algorithm))
        if report["runs"]:  # a fresh student per algorithm; the teacher and data are shared
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
        report["runs"][algorithm] = {"steps": rows, "eval": _measured_eval(trainer)}
        say(_lines(algorithm, report["runs"][algorithm], est))
        world = trainer.world
    out.mkdir(parents=True, exist_ok=True)
    (out / "smoke.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    say(f"measured times and peaks: {out / 'smoke.json'} (put them in the preset's about.measured block)")
    return report


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
