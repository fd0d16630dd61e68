"""``kdrl-mini`` command line (also ``python -m kdrl_mini``).

    kdrl-mini train --config kdrl [--max-steps N] [--output-dir DIR] [--resume | --overwrite] [--seed S]
                    [--checkpoint-every N] [--set key=value ...] [--engine kit|trl]
    kdrl-mini eval --run DIR | --student PATH [--split test|ood|both] [--n N]
    kdrl-mini reproduce [--output-dir DIR] [--steps N] [--full] [--seeds 0 1 2]
    kdrl-mini reproduce --preset t4-16gb|24gb|80gb-paper|list [--dry-run] [--steps N] [--set key=value ...]
    kdrl-mini presets
    kdrl-mini build-world [--root data] [--seed 0]
    kdrl-mini real-pair [--steps 3] [--cache-dir .cache/real] [--keep-every 2] [--heal | --no-heal] [--eval-size 4]
                        [--learn [--reward-samples 8]]
                        [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _train(args) -> int:
    from . import run_folder
    from .config import load_config, parse_set
    from .metrics import is_eval
    from .trainer import Trainer

    flags = {"max_steps": args.max_steps, "output_dir": args.output_dir, "seed": args.seed, "threads": args.threads,
             "checkpoint_every": args.checkpoint_every}
    cfg = load_config(args.config, **{**parse_set(args.set), **{k: v for k, v in flags.items() if v is not None}})
    if getattr(args, "engine", "kit") == "trl":
        return _train_trl(cfg, args)
    run_folder.check(cfg.output_dir, args.resume, args.overwrite)  # before any model loads
    log = Trainer(cfg).train(resume=args.resume, overwrite=args.overwrite)
    evals = [row for row in log if is_eval(row)]
    last = evals[-1]["step"] if evals else None
    for e in (row for row in evals if row["step"] == last):
        print(f"{e['split']:>5}: accuracy {e['eval_accuracy']:.3f}  length {e['eval_length']:.1f}")
    print(f"metrics: {Path(cfg.output_dir) / 'metrics.jsonl'}")
    return 0


def _train_trl(cfg, args) -> int:
    """``--engine trl``: the same YAML fields mapped onto KDRLConfig, trained by TRL (kdrl_mini.integrations.trl)."""
    if args.resume:
        raise ValueError("--resume is not supported with --engine trl (TRL keeps its own checkpoints)")
    try:
        from .integrations.trl import train_with_trl
    except ImportError as err:
        raise ValueError(f"--engine trl needs TRL: pip install 'kdrl_mini[trl]' ({err})") from err
    summary = train_with_trl(cfg)
    print(f"trained {summary['steps']} steps through TRL; last kd/kl "
          f"{summary['kd_kl'][-1] if summary['kd_kl'] else float('nan'):.4f}; output in {cfg.output_dir}")
    return 0


def _eval(args) -> int:
    from .config import TrainConfig, load_config
    from .trainer import Trainer, load_world

    if args.run:
        run = Path(args.run)
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"{run} is not a run folder (no config.yaml); pass the --output-dir of a train run")
        cfg = load_config(run / "config.yaml")
    else:
        cfg = TrainConfig(student_path=args.student, teacher_path=args.teacher or args.student)
    world = load_world(cfg)
    if args.run:
        _load_trained_weights(world, Path(args.run))
    trainer = Trainer(cfg, world)
    splits = trainer.world.eval_splits if args.split == "all" else (args.split,)
    for split in splits:
        r = trainer.evaluate(split, args.n)
        print(f"{split:>5}: accuracy {r['eval_accuracy']:.3f}  length {r['eval_length']:.1f}  (n={args.n or cfg.eval_size})")
    return 0


def _load_trained_weights(world, run: Path) -> None:
    """Put a finished run's trainable weights (adapter or full) into the freshly loaded student."""
    from . import checkpoints

    ckpt = run / "checkpoint.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint.pt in {run}; the run may not have reached its first checkpoint")
    checkpoints.load_trainable(world.student, checkpoints.load(ckpt)["trainable"], ckpt)


def _reproduce(args) -> int:
    if args.preset:
        return _reproduce_preset(args)
    if args.full:
        return _reproduce_full(args)
    from . import study
    from .config import load_config
    from .plotting import comparison_figure

    out = Path(args.output_dir or "runs/reproduce")
    base = load_config("kdrl", threads=args.threads)
    if args.steps:
        base = base.replace(max_steps=args.steps)
    plan = study.brief_variants()
    if args.only:
        plan = {k: v for k, v in plan.items() if k in args.only}
    seeds = args.seeds or [0]
    t0 = time.time()
    study.run_study(out, plan, seeds, base)
    records = study.collect(out)  # every finished run in the folder, also from earlier --only calls
    table = study.aggregate(records)
    study.write_table(table, out / "table.csv")
    print(study.format_table(table))
    runs = {name: out / "runs" / name / f"seed{seeds[0]}" for name in plan if name in study.BASELINES}
    comparison_figure(runs, out / "comparison.png")
    print(f"\n{len(records)} runs in {time.time() - t0:.0f} s; table {out / 'table.csv'}, plot {out / 'comparison.png'}")
    print("One seed and a short budget: a demonstration, not evidence. The pre-registered study (5 seeds, "
          "verdicts with intervals) lives in data/study: kdrl-mini reproduce --full")
    return 0


def _reproduce_full(args) -> int:
    """The pre-registered study (data/study/PREREGISTRATION.md): resumable, per-run files as they finish."""
    from . import reproduction, study
    from .config import load_config

    out = Path(args.output_dir or "data/study")
    if not (out / "PREREGISTRATION.md").is_file():
        raise FileNotFoundError(f"{out / 'PREREGISTRATION.md'} is missing: the study runs only after its plan is "
                                f"committed (see kdrl_mini/reproduction.py)")
    settings = reproduction.SETTINGS
    base = load_config("kdrl", threads=args.threads, **settings.base_overrides())
    plan, seeds = settings.full_plan()
    if args.only:
        plan = {k: v for k, v in plan.items() if k in args.only}
    if args.seeds:
        seeds = {k: [s for s in v if s in args.seeds] for k, v in seeds.items()}
    t0 = time.time()
    untrained = out / "untrained.json"
    if not untrained.exists():
        untrained.write_text(json.dumps(reproduction.untrained_summary(base.replace(seed=0)), indent=1))
    study.run_study(out, plan, seeds, base, summarize=reproduction.summarize)
    records = study.collect(out)
    table, claims = reproduction.write_outputs(out, records, json.loads(untrained.read_text()))
    print(table + "\n\n" + claims)
    print(f"\n{len(records)} finished runs ({time.time() - t0:.0f} s this call); {out / 'claims.md'}, {out / 'forest.png'}")
    return 0


def _reproduce_preset(args) -> int:
    """``--preset NAME``: the one-GPU study of :mod:`kdrl_mini.preset_study` (``list``: the presets)."""
    from . import preset_study
    from .config import parse_set

    if args.preset == "list":
        return _presets(args)
    if args.full:
        raise ValueError("--preset and --full are two different studies; pass one of them")
    overrides = parse_set(args.set)
    overrides.update({k: v for k, v in {"max_steps": args.steps, "threads": args.threads}.items() if v})
    preset_study.reproduce(args.preset, overrides, args.output_dir, args.seeds, args.only, args.dry_run)
    return 0


def _presets(args) -> int:
    from .preset_study import presets_report

    print(presets_report())
    return 0


def _build_world(args) -> int:
    from .world import build_world

    report = build_world(args.root, seed=args.seed, threads=args.threads)
    print(json.dumps({k: v for k, v in report.items() if k in ("teacher", "student", "build_seconds")}, indent=1))
    return 0


def _real_pair(args) -> int:
    from . import learning_check, models, real
    from .config import parse_set
    from .measure import parameter_count
    from .trainer import Trainer

    set_fields = parse_set(args.set)  # before anything is built: a typo fails at once
    cache = Path(args.cache_dir) if args.cache_dir else real.DEFAULT_CACHE
    if args.learn and not args.heal:
        raise ValueError("--learn trains the healed student; drop --no-heal")
    t0 = time.time()
    paths = real.materialize_pair(cache, args.keep_every, seed=args.seed, heal=args.heal)
    student = paths.get("healed", paths["student"])
    print(f"pair ready in {time.time() - t0:.0f} s: teacher {paths['teacher']}, student {student}")
    if args.heal:
        h = json.loads((student / real.MARKER).read_text())
        print(f"healed on {h['examples']} teacher answers: SFT loss {h['loss_first']:.2f} -> {h['loss_last']:.2f} "
              f"(built in {h['label_seconds'] + h['fit_seconds']:.0f} s; cached, reused until the recipe changes)")
    overrides = {"max_steps": args.steps, "seed": args.seed, "threads": args.threads, "output_dir": args.output_dir,
                 "eval_size": args.eval_size}
    overrides = {**set_fields, **{k: v for k, v in overrides.items() if v is not None}}
    if args.learn:
        cfg = learning_check.learn_config(cache, args.keep_every, **overrides)
        learning_check.write_pool(paths["data"])
    else:
        cfg = real.real_config(cache, args.keep_every, healed=args.heal, **{"max_steps": 3, **overrides})
    trainer = Trainer(cfg)
    before = [trainer.evaluate(split) for split in trainer.world.eval_splits]  # the same eval as at the end
    train = lambda: trainer.train(overwrite=True)  # noqa: E731  the demo always starts a fresh run
    if args.learn:
        print(f"sampled reward on the {len(trainer.world.train)} pool prompts ({cfg.train_split}) and as many test "
              f"prompts, {args.reward_samples} samples each, before and after training ...")
        log, result = learning_check.run(trainer, args.reward_samples, train)
    else:
        log = train()
    (Path(cfg.output_dir) / "eval_before.jsonl").write_text("".join(json.dumps(row) + "\n" for row in before))
    print(f"{'step':>4} {'reward':>7} {'exact_kl':>9} {'step_s':>7}")
    for m in (row for row in log if row.get("kind") == "train"):
        print(f"{m['step']:>4} {m['reward']:>7.3f} {m['exact_kl']:>9.3f} {m['step_time']:>7.1f}")
    for b, e in zip(before, (row for row in log if row.get("kind") == "eval")):
        print(f"{e['split']:>5}: greedy accuracy {b['eval_accuracy']:.3f} before -> {e['eval_accuracy']:.3f} after  "
              f"length {e['eval_length']:.1f}  (n={cfg.eval_size})")
    if args.learn:
        print(learning_check.summary(result) + f"\nfigure: {Path(cfg.output_dir) / 'pool_reward.png'}")
    trainable, total = models.trainable_parameters(trainer.world.student)
    print(f"parameters: teacher {parameter_count(paths['teacher']):,}, student {parameter_count(student):,} "
          f"(LoRA trainable {trainable:,})")
    print(f"metrics: {Path(cfg.output_dir) / 'metrics.jsonl'}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument gives the kit's one line (``kdrl-mini train: error: ...``)
    and exit code 2, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def _folder(text: str) -> str:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; pass a folder path")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kdrl-mini", description="GRPO, KD and KDRL on a tiny world you can train on a laptop.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one config (grpo, kd-fkl, kd-rkl, kdrl or a YAML file)")
    t.add_argument("--config", required=True, help="YAML path or shipped name: grpo, kd-fkl, kd-rkl, kdrl")
    t.add_argument("--max-steps", type=_at_least(1))
    t.add_argument("--output-dir", type=_folder)
    t.add_argument("--checkpoint-every", type=_at_least(0), help="steps between checkpoints (0 = only at the end)")
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in OUTPUT_DIR")
    t.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override any config field, e.g. --set beta=0.1 kl_kind=k3")
    t.add_argument("--engine", choices=["kit", "trl"], default="kit",
                   help="kit: the kit's own loop; trl: KDRLTrainer on TRL (needs the [trl] extra, student_quant=none, "
                        "lora_r=0; scale out with accelerate launch, see docs/scaling.md)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="greedy accuracy of a trained run or a checkpoint folder")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a train run folder")
    src.add_argument("--student", help="a model folder (e.g. data/models/teacher)")
    e.add_argument("--teacher", help="teacher folder (only for vocabulary checks with --student)")
    e.add_argument("--split", default="all", choices=["test", "blind", "ood", "ood_control", "all"])
    e.add_argument("--n", type=_at_least(1), help="rows evaluated (default: config eval_size)")
    e.set_defaults(func=_eval)

    r = sub.add_parser("reproduce", help="GRPO vs KD vs KDRL on the shipped world; --full runs the whole study")
    r.add_argument("--output-dir", type=_folder)
    r.add_argument("--steps", type=_at_least(1), help="training steps per run (default: the kdrl config's max_steps)")
    r.add_argument("--full", action="store_true", help="the pre-registered study into data/study (resumable)")
    r.add_argument("--seeds", type=int, nargs="+")
    r.add_argument("--only", nargs="+", help="restrict to these variant names")
    r.add_argument("--preset", help="one GPU with a real pair on GSM8K: t4-16gb, 24gb, 80gb-paper, or list")
    r.add_argument("--dry-run", action="store_true", help="with --preset: print the plan and estimates, load nothing")
    r.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="with --preset: override config fields, "
                   "e.g. --set micro_batch_size=2")
    r.set_defaults(func=_reproduce)

    lp = sub.add_parser("presets", help="list the one-GPU presets with their memory and time estimates")
    lp.set_defaults(func=_presets)

    b = sub.add_parser("build-world", help="rebuild the tiny world's data, tokenizer, teacher and student")
    b.add_argument("--root", default="data")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_build_world)

    q = sub.add_parser("real-pair", help="build the SmolLM2-135M teacher / 15-layer student pair offline and run a few KDRL steps")
    q.add_argument("--steps", type=_at_least(1), help="KDRL steps (default 3; 42 with --learn)")
    q.add_argument("--cache-dir", help="where the pair, data and run go (default .cache/real in the repository)")
    q.add_argument("--keep-every", type=_at_least(1), default=2, help="student keeps every k-th teacher layer (default 2)")
    q.add_argument("--output-dir", type=_folder, help="run folder (default CACHE_DIR/runs/kdrl)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--heal", action=argparse.BooleanOptionalAction, default=True,
                   help="train the healed student: a short SFT on the teacher's answers, built once into "
                        "CACHE_DIR (a few minutes the first time); --no-heal trains the freshly pruned one")
    q.add_argument("--eval-size", type=_at_least(1), help="test and OOD rows of the greedy evaluation at the end "
                   "(default 4; 50 with --learn)")
    q.add_argument("--learn", action="store_true",
                   help="the learning check (kdrl_mini.learning_check): KDRL on the healed fp32 student over a fixed "
                        "pool of 28 training prompts (answers 1..28), 6 passes; sampled reward on the pool and on held-out "
                        "test prompts before and after")
    q.add_argument("--reward-samples", type=_at_least(2), default=8,
                   help="with --learn: samples per pool prompt for the before/after reward (default 8)")
    q.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override any field of real.real_config, e.g. "
                   "--set student_quant=none lora_r=16 group_size=8")
    q.set_defaults(func=_real_pair)

    for sp in (t, e, r, b, q):
        sp.add_argument("--threads", type=_at_least(1), help="torch CPU threads")
    return p


def _names_hub(args) -> bool:
    """Does the command's config name a hub id (dataset, student or teacher)? Then the run may use
    the hub (the user's own HF_HUB_OFFLINE still wins); the kit's own local world stays offline.
    A config that cannot be read counts as local: the command itself reports it, with the fix."""
    from .config import TrainConfig, load_config, parse_set
    from .utils import hub_names

    try:
        if getattr(args, "config", None):
            cfg = load_config(args.config, **parse_set(getattr(args, "set", None)))
        elif getattr(args, "run", None):
            cfg = load_config(Path(args.run) / "config.yaml")
        elif getattr(args, "student", None):
            cfg = TrainConfig(student_path=args.student, teacher_path=args.teacher or args.student)
        elif getattr(args, "preset", None) not in (None, "list"):  # reproduce --preset NAME: hub models, GSM8K
            from .presets import load_preset

            cfg = load_preset(args.preset, **parse_set(getattr(args, "set", None)))[0]
        else:
            return False
    except (ValueError, TypeError, OSError):
        return False
    return bool(hub_names(cfg))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .utils import setup

    setup(seed=getattr(args, "seed", None) or 0, threads=getattr(args, "threads", None) or 1,
          offline_hub=not _names_hub(args))
    try:
        return args.func(args)
    except (ValueError, FloatingPointError, OSError) as err:
        from .checkpoints import FULL, READ_ONLY, write_error

        if isinstance(err, OSError) and err.errno in FULL + READ_ONLY:  # full disk, read-only folder
            err = write_error(err, err.filename or "a run file")
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"kdrl-mini {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
