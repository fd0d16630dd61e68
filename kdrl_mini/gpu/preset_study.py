"""The paper's comparison on one GPU: GRPO, KD-RKL, KDRL and KDRL annealed on a preset.

Every run has the same budget (the preset's steps, prompts, responses and token budget) and writes
the same files as the tiny-world studies (``out/runs/<variant>/seed<k>/`` with ``config.yaml``,
``metrics.jsonl``, ``final.json``), so :mod:`kdrl_mini.study.runner` runs it (resumable: finished runs
are skipped, an interrupted one resumes from its checkpoint) and :mod:`.preset_results` summarises each
run and writes the tables and verdicts. The arms (:func:`arms`) take the preset's coefficients: KDRL at
a constant beta, and KDRL annealed linearly to a floor within a fraction of the run, then held (the
paper's shape).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from .. import engines, models
from ..config import TrainConfig
from ..runs.plots import comparison_figure
from ..sampling_copy import check_copy_device
from ..study.runner import collect, run_study
from . import memory as me
from . import preset_results
from .presets import PresetInfo, StudyCoefficients, estimate_preset, fp16_refusal, load_preset, preset_names
from .timing import run_seconds

VARIANTS = ("grpo", "kd-rkl", "kdrl", "kdrl-anneal")


def arms(c: StudyCoefficients, max_steps: int) -> dict[str, dict]:
    """variant -> config overrides of the four arms (``VARIANTS``), on one shared base config: GRPO,
    KD-RKL, KDRL (k2 in the loss) at the constant ``c.beta``, and KDRL annealed linearly from
    ``c.anneal_start`` to the floor ``c.anneal_floor`` within ``c.anneal_steps(max_steps)``, then held."""
    return {"grpo": {"algorithm": "grpo"}, "kd-rkl": {"algorithm": "kd-rkl"},
            "kdrl": {"algorithm": "kdrl", "beta": c.beta},
            "kdrl-anneal": {"algorithm": "kdrl", "beta": c.anneal_start, "beta_end": c.anneal_floor,
                            "beta_schedule": "linear", "anneal_steps": c.anneal_steps(max_steps)}}


def plan(cfg: TrainConfig, info: PresetInfo, seeds: list[int] | None = None,
         only: list[str] | None = None) -> tuple[dict, dict]:
    """(variant -> config overrides, variant -> seeds) for the preset at ``cfg.max_steps``."""
    unknown = sorted(set(only or ()) - set(VARIANTS))
    if unknown:
        raise ValueError(f"--only {unknown}: the preset study's variants are {list(VARIANTS)}")
    variants = arms(info.study, cfg.max_steps)
    names = [v for v in VARIANTS if not only or v in only]
    chosen = list(seeds) if seeds else list(info.study.seeds)
    return {v: variants[v] for v in names}, {v: chosen for v in names}


def wall_seconds(cfg: TrainConfig, est: me.MemoryEstimate, variants: dict, seeds: dict, baseline: bool = True) -> float:
    """Estimated wall time of the whole plan (steps and evaluations; model downloads not counted)."""
    runs = sum(len(seeds[v]) for v in variants)
    return runs * run_seconds(cfg, est) + (est.detail.get("eval_seconds", 0.0) if baseline else 0.0)


def describe(cfg: TrainConfig, info: PresetInfo, est: me.MemoryEstimate, sources: dict, variants: dict,
             seeds: dict, out: Path) -> str:
    """The plan printed before anything loads: models, data, budget, variants, estimates."""
    c = info.study
    hours = wall_seconds(cfg, est, variants, seeds) / 3600
    lines = [
        f"preset {info.name}: {info.description}",
        f"card: {info.machine.name}, {info.machine.memory_gib:g} GiB",
        f"student {cfg.student_path} ({cfg.student_quant} + LoRA r={cfg.lora_r}), teacher {cfg.teacher_path} "
        f"({cfg.teacher_quant}), compute {cfg.compute_dtype}",
        f"data {cfg.dataset} ({cfg.dataset_config}): train={cfg.train_split}, eval={cfg.test_split} "
        f"({cfg.eval_size} rows every {cfg.eval_every} steps), checker {cfg.answer_checker}",
        f"budget per run: {cfg.max_steps} steps x {cfg.prompts_per_step} prompts x {cfg.group_size} responses, "
        f"{cfg.max_new_tokens} new tokens, micro-batch {cfg.micro_batch_size}, gradient checkpointing "
        f"{'on' if cfg.gradient_checkpointing else 'off'}",
        f"variants: {', '.join(variants)} (seeds {sorted({s for v in seeds.values() for s in v})}); KDRL beta "
        f"{c.beta:g}, annealed {c.anneal_start:g} -> {c.anneal_floor:g} within {c.anneal_steps(cfg.max_steps)} "
        f"steps, then held",
        f"engine: {info.engine} ({info.engine_why})",
        "departures from the paper: " + "; ".join(info.departures),
        f"model numbers from: student {sources['student']}, teacher {sources['teacher']}",
        me.format_estimate(est),
        f"estimated wall time: about {hours:.1f} h for {sum(len(s) for s in seeds.values())} runs "
        f"(an estimate: about {est.step_seconds:.0f} s/step; model downloads not counted)",
        f"output: {out}",
    ]
    if info.measured:
        lines.insert(-2, f"measured on the card: {info.measured}")
    return "\n".join(lines)


def run(cfg: TrainConfig, info: PresetInfo, out: str | Path, variants: dict, seeds: dict,
        baseline: bool = True, progress: bool = True) -> list[dict]:
    """Train the plan into ``out`` (resumable) and write table.md, claims.md, comparison.png, forest.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    untrained = out / "untrained.json"
    if baseline and not untrained.exists():
        untrained.write_text(json.dumps(preset_results.untrained_summary(cfg.replace(seed=0)), indent=1))
        models.free_memory()  # hand the untrained baseline's models back before the study loads its own
    run_study(out, variants, seeds, cfg, summarize=preset_results.summarize, progress=progress,
              step_progress=progress, engine=info.engine)
    return write_results(out, info)


def write_results(out: str | Path, info: PresetInfo | None = None) -> list[dict]:
    """Tables and figures from every finished run under ``out`` (also after a partial study)."""
    out = Path(out)
    records = collect(out)
    base = json.loads((out / "untrained.json").read_text()) if (out / "untrained.json").exists() else None
    preset_results.write_outputs(out, records, base, VARIANTS)
    runs = {}
    for name in VARIANTS:
        first = sorted((out / "runs" / name).glob("seed*/metrics.jsonl"))
        if first:
            runs[name] = first[0].parent
    if runs:
        comparison(runs, out / "comparison.png", info)
    return records


def comparison(runs: dict, path: Path, info: PresetInfo | None) -> None:
    fig = comparison_figure(runs)
    title = f"GRPO vs KD-RKL vs KDRL on preset {info.name}" if info else "GRPO vs KD-RKL vs KDRL"
    fig.suptitle(title + " (first seed; exact KL is not logged at a real vocabulary; no ood split)", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def memory_check(name: str, est: me.MemoryEstimate, cfg: TrainConfig, free_bytes: int | None = None) -> str:
    """Before any model loads: compare the estimate with the device's free memory.

    Raises ValueError (one line, naming the setting to change) when the estimate does not fit or
    the card lacks bf16 for a bf16 preset; returns the line to print otherwise. On a machine
    without CUDA (or ``device: cpu``) the check is skipped and says so. ``free_bytes`` replaces
    ``torch.cuda.mem_get_info()`` (tests)."""
    on_cuda = torch.cuda.is_available() and (cfg.device is None or cfg.device.startswith("cuda"))
    if free_bytes is None and not on_cuda:
        return ("no CUDA device: the GPU memory check is skipped (the estimate is for the preset's card; "
                "on this CPU the run would be very slow)")
    if cfg.rollout_copy:
        check_copy_device(torch.device("cuda"))  # refused on a card, before anything loads
    total = None
    if free_bytes is None:
        card_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        if cfg.compute_dtype == "bf16" and not card_bf16:
            raise ValueError(f"preset {name} computes in bf16 but {torch.cuda.get_device_name()} has no bf16; "
                             f"use a bf16 card, or KDRL_ALLOW_FP16=1 with --set compute_dtype=fp16 (NaN risk)")
        refused = fp16_refusal(name, cfg, card_bf16)
        if refused:
            raise ValueError(refused)
        free_bytes, total = torch.cuda.mem_get_info()
    refused = me.refusal(name, est, cfg, free_bytes)
    if refused:
        raise ValueError(refused)
    of = f" of {me.gib(total)}" if total else ""
    return (f"GPU memory: {me.gib(free_bytes)}{of} GiB free; the estimate needs about "
            f"{me.gib(me.needed_bytes(est))} GiB: fits")


def presets_table(use_source: bool = False) -> str:
    """Markdown: every preset with its pair, card and estimates (labelled as such)."""
    rows = ["| preset | student (4-bit + LoRA) / teacher (8-bit) | card | engine | new tokens | micro-batch, "
            "checkpointing | est. peak GiB | est. s/step | est. study h (4 runs) |", "|---|---|---|---|---|---|---|---|---|"]
    for name in preset_names():
        cfg, info = load_preset(name)
        est, _ = estimate_preset(cfg, info, use_source)
        variants, seeds = plan(cfg, info)
        rows.append(f"| {name} | {cfg.student_path} / {cfg.teacher_path} | {info.machine.name}, "
                    f"{info.machine.memory_gib:g} GiB | {info.engine} | {cfg.max_new_tokens} | {cfg.micro_batch_size}, "
                    f"{'on' if cfg.gradient_checkpointing else 'off'} | {est.total / me.GiB:.1f} | "
                    f"{est.step_seconds:.0f} | {wall_seconds(cfg, est, variants, seeds) / 3600:.1f} |")
    return "\n".join(rows)


def presets_report() -> str:
    """``kdrl-mini presets``: the table and what its numbers are."""
    return (presets_table() + "\nEstimates from the presets' model numbers, not measurements (no GPU has run them "
            "yet); details: kdrl-mini reproduce --preset NAME --dry-run")


def reproduce(name: str, overrides: dict, output_dir: str | None = None, seeds: list[int] | None = None,
              only: list[str] | None = None, dry_run: bool = False, engine: str | None = None, say=print) -> list[dict]:
    """``kdrl-mini reproduce --preset NAME``: print the plan, the memory estimate and the free-memory
    check before anything loads, then run (or resume) every run on the preset's engine (or ``engine``)
    and print the tables. Returns the finished runs' records ([] on a dry run)."""
    cfg, info = load_preset(name)
    cfg = cfg.replace(**overrides)  # null unsets a field (e.g. --set dataset=null for local data)
    if engine and engine != info.engine:
        info = dataclasses.replace(info, engine=engine, engine_why="chosen with --engine")
    out = Path(output_dir or cfg.output_dir)
    cfg = cfg.replace(output_dir=str(out))
    variants, chosen = plan(cfg, info, seeds, only)
    for overrides in variants.values():  # what the engine refuses, refused here: also on a dry run
        engines.check(cfg.replace(**overrides), info.engine)
    est, sources = estimate_preset(cfg, info)
    say(describe(cfg, info, est, sources, variants, chosen, out))
    say(memory_check(name, est, cfg))
    if dry_run:
        say("dry run: no model loaded, nothing trained")
        return []
    t0 = time.time()
    records = run(cfg, info, out, variants, chosen)
    say((out / "table.md").read_text() + "\n" + (out / "claims.md").read_text())
    say(f"{len(records)} finished runs ({time.time() - t0:.0f} s this call); {out / 'table.md'}, "
        f"{out / 'comparison.png'}; rerun the same command to resume")
    return records
