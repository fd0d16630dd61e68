"""``kdrl-mini smoke --preset NAME``: the first run on a card, in one command, ending in a verdict.

A few steps of every algorithm (or ``only`` some) on the preset's models, data and settings (``--set``
changes any field), on the preset's engine (the kit's trainer, or TRL's for GRPO, KD-RKL and KDRL), then
one more step forced to the worst-case length (every response runs to ``max_new_tokens``) and one small
greedy evaluation. It measures each phase's time and peak memory (CUDA's allocated peak; on a Linux CPU
the process's resident peak), the allocator's reserved peak and the device's own use over the run, and
prints them next to the estimate of :mod:`kdrl_mini.gpu.memory` (per algorithm: KD-FKL samples from the
teacher) with a verdict per phase (:mod:`.smoke_report`). Writes ``smoke.json`` in the output folder,
which must not hold a run already unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from .. import engines, models
from ..config import ALGORITHMS, TRL_ALGORITHMS
from ..runs import folder
from ..runs.loading import load_student_for, load_world
from ..trainer import Trainer
from ..utils import vllm_installed
from . import smoke_report as sr
from .preset_study import memory_check, plan
from .presets import estimate_preset, load_preset

LAP_PHASE = {"rollout": "generate", "teacher": "teacher", "train": "train"}
EVAL_ROWS = 8


def smoke(name: str, overrides: dict | None = None, output_dir: str | None = None, steps: int = 2,
          algorithms: tuple[str, ...] | list[str] | None = None, engine: str | None = None, overwrite: bool = False,
          say=print) -> dict:
    """Run ``steps`` steps and one worst-case step of each algorithm of preset ``name`` on its engine (or
    ``engine``), and one evaluation of ``EVAL_ROWS`` rows; return (and write to ``<output_dir>/smoke.json``)
    the measurements, the estimates and the verdict."""
    cfg, info = load_preset(name)
    study_cfg = cfg.replace(**(overrides or {}))  # null unsets a field here (e.g. dataset=null for local data)
    out = Path(output_dir or f"runs/smoke-{name}")
    engine = engine or info.engine
    algorithms = _chosen(algorithms, engine)
    _check_output(out, algorithms, overwrite)
    cfg = study_cfg.replace(max_steps=steps + 1, eval_every=0, checkpoint_every=0,
                            eval_size=min(study_cfg.eval_size, EVAL_ROWS), final_eval_size=min(study_cfg.eval_size, EVAL_ROWS))
    info = dataclasses.replace(info, engine=engine)
    ests = {a: estimate_preset(cfg.replace(algorithm=a), info)[0] for a in algorithms}
    say(memory_check(name, max(ests.values(), key=lambda e: e.total), cfg))
    device = models.pick_device(cfg.device)
    report = {"preset": name, "engine": engine, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else str(device), "generation": _generation(cfg, engine), "versions": sr.versions(),
              "max_new_tokens": cfg.max_new_tokens, "runs": {}}
    runs = _trl_runs if engine == "trl" else _kit_runs
    for algorithm, run in runs(cfg, out, steps, algorithms, overwrite):
        est = ests[algorithm]
        run.update(phases=sr.phase_rows(run, est, device.type == "cuda"), estimated_step_seconds=est.step_seconds,
                   estimated_total=est.total)
        report["runs"][algorithm] = run
    variants, seeds = plan(study_cfg, info)
    study_est = estimate_preset(study_cfg, info)[0]
    report["projection"] = sr.projection(study_cfg, study_est, report["runs"], sum(len(s) for s in seeds.values()))
    report["verdict"], report["reasons"] = sr.verdict(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "smoke.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    say(sr.lines(report))
    say(f"measurements: {out / 'smoke.json'} (put them in the preset's about.measured block)")
    return report


def _chosen(algorithms, engine: str) -> list[str]:
    known = TRL_ALGORITHMS if engine == "trl" else ALGORITHMS
    unknown = [a for a in algorithms or () if a not in known]
    if unknown:
        raise ValueError(f"--only {unknown}: the {engine} engine's smoke runs {list(known)}")
    return list(algorithms or known)


def _check_output(out: Path, algorithms: list[str], overwrite: bool) -> None:
    """Refuse, in one line, an output folder that holds a smoke or a run already (unless ``overwrite``)."""
    held = [p for p in (out / "smoke.json", *(out / n / f for n in ("", *algorithms) for f in folder.RUN_FILES))
            if p.exists()] + [p for p in (out, *(out / a for a in algorithms)) if folder.latest_checkpoint(p)]
    if held and not overwrite:
        raise ValueError(f"{out} already holds a smoke or a run ({held[0]}); pass --overwrite to replace it, or "
                         f"another --output-dir")


def _generation(cfg, engine: str) -> str:
    """Which path generated the rollouts: HF generate (from the fp32 copy on a CPU) or vLLM colocated."""
    cuda = models.pick_device(cfg.device).type == "cuda"
    if engine == "trl":  # kdrl_mini.integrations.trl.launch.vllm_settings decides the same way
        if cuda and vllm_installed():
            return "vLLM colocated (the student's dense weights, kdrl_mini.integrations.trl.vllm_sync)"
        return "HF generate (" + ("vLLM not installed" if cuda else "no CUDA device") + ")"
    copy = cfg.rollout_copy if cfg.rollout_copy is not None else not cuda
    return "HF generate" + (" from the fp32 copy" if copy and cfg.lora_r > 0 else "")


def _failure(err: BaseException, laps) -> dict:
    """The error of a run that stopped, and the phase it stopped in (the first the step's laps lack)."""
    done = set(getattr(laps, "laps", {}) or {})
    phase = next((LAP_PHASE[k] for k in ("rollout", "teacher", "train") if k not in done), "eval")
    line = traceback.format_exception_only(type(err), err)[-1].strip()[:200]
    return {"error": line, "failed_phase": phase}


def _trl_runs(cfg, out: Path, steps: int, algorithms, overwrite: bool):
    """(algorithm, measurements) of each algorithm trained through TRL (:mod:`kdrl_mini.engines`); the
    evaluation is the kit's own greedy one inside the run, whose time and peak are not split out here."""
    train_run = engines.trl_run()
    for algorithm in algorithms:
        measured, rows, failed = [], [], {}
        with sr.DeviceWatch(models.pick_device(cfg.device)) as watch:
            try:
                rows = train_run(cfg.replace(algorithm=algorithm, output_dir=str(out / algorithm)), overwrite=overwrite,
                                 progress=False, measured=measured, worst_case_from=steps)
            except Exception as err:  # noqa: BLE001 - the verdict names it; the next algorithm still runs
                failed = _failure(err, None)
        train = [r for r in rows if r["kind"] == "train"]
        evals = [r for r in rows if r["kind"] == "eval"]
        yield algorithm, {
            "steps": [{"step": r["step"], "seconds": m["seconds"], "loss": r["loss"], "skipped": 0.0, "laps": m["laps"],
                       "peaks": {LAP_PHASE[k]: v for k, v in m["peaks"].items()}} for r, m in zip(train, measured)],
            "eval": {"split": evals[0]["split"] if evals else None, "seconds": None, "peak": None,
                     "accuracy": evals[0]["eval_accuracy"] if evals else None},
            "device": watch.as_dict(), **failed}


def _kit_runs(cfg, out: Path, steps: int, algorithms, overwrite: bool):
    """(algorithm, measurements) of each algorithm on the kit's trainer; teacher and data loaded once, each
    algorithm's student (and the previous trainer) released before the next one loads."""
    world = load_world(cfg)
    vocab = getattr(world.student, "kdrl_vocab", None)
    for i, algorithm in enumerate(algorithms):
        run_cfg = cfg.replace(algorithm=algorithm, output_dir=str(out / algorithm))
        if i:  # a fresh student per algorithm; the teacher and data are shared
            world = dataclasses.replace(world, student=None)
            models.free_memory()
            world = dataclasses.replace(world, student=load_student_for(run_cfg, vocab))
        trainer = Trainer(run_cfg, world)
        trainer.track_memory = True
        rows, failed = [], {}
        with sr.DeviceWatch(trainer.device) as watch:
            try:
                for k in range(steps + 1):
                    with worst_case(trainer) if k == steps else nullcontext():
                        row = trainer.train_step()
                    rows.append({"step": trainer.step, "seconds": row["step_time"], "loss": row["loss"],
                                 "skipped": row["skipped"], "laps": dict(trainer.laps.laps),
                                 "response_length": row.get("teacher_response_length") if algorithm == "kd-fkl"
                                 else row["response_length"],
                                 "peaks": {LAP_PHASE[k]: v for k, v in trainer.laps.peaks.items()}})
                evaluation = _measured_eval(trainer)
            except Exception as err:  # noqa: BLE001 - the verdict names it; the next algorithm still runs
                failed, evaluation = _failure(err, trainer.laps), {"split": None, "seconds": None, "peak": None}
        yield algorithm, {"steps": rows, "eval": evaluation, "device": watch.as_dict(), **failed}
        world = trainer.world
        del trainer  # the previous student, its optimiser and its copy go before the next student loads


@contextmanager
def worst_case(trainer):
    """Every response of a step inside the block runs to ``max_new_tokens``: the sampling models' generation
    configs ask for that many new tokens at least (an end-of-sequence token is suppressed until then)."""
    policy = trainer.rollout_policy
    sampling = [trainer.world.student, trainer.world.teacher, policy.copy and policy.copy.model, policy.teacher_copy]
    configs = list({id(m.generation_config): m.generation_config for m in sampling if m is not None}.values())
    for c in configs:
        c.min_new_tokens = trainer.cfg.max_new_tokens
    try:
        yield
    finally:
        for c in configs:
            c.min_new_tokens = None


def _measured_eval(trainer) -> dict:
    laps = type(trainer.laps)(trainer.device, track_memory=True)
    split = trainer.world.eval_splits[0]
    row = trainer.evaluate(split, EVAL_ROWS)
    laps("eval")
    return {"split": split, "seconds": laps.laps["eval"], "peak": laps.peaks.get("eval"),
            "accuracy": row.get("eval_accuracy")}
