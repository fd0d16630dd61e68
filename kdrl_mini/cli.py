"""``kdrl-mini`` command line (also ``python -m kdrl_mini``).

    kdrl-mini train --config kdrl [--max-steps N] [--output-dir DIR] [--resume | --overwrite] [--seed S]
                    [--checkpoint-every N] [--set key=value ...] [--engine kit|trl]
    kdrl-mini eval --run DIR | --student PATH [--split test|ood|both] [--n N]
    kdrl-mini reproduce [--output-dir DIR] [--steps N] [--full] [--seeds 0 1 2]
    kdrl-mini reproduce --preset t4-16gb|24gb|80gb-paper|list [--dry-run] [--steps N] [--engine kit|trl]
                        [--set key=value ...]
    kdrl-mini presets
    kdrl-mini smoke --preset t4-16gb|24gb|80gb-paper [--steps N] [--only ALGORITHM ...] [--engine kit|trl] [--overwrite] [--set key=value ...]
    kdrl-mini build-world [--root data] [--seed 0]
    kdrl-mini real-pair [--steps 3] [--cache-dir .cache/real] [--keep-every 2] [--heal | --no-heal] [--eval-size 4]
                        [--learn [--reward-samples 8]]
                        [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import commands
from .config import TrainConfig, load_config, parse_set
from .gpu.presets import load_preset
from .runs.checkpoints import FULL, READ_ONLY, write_error
from .utils import hub_names, setup

# The handlers of the rooms (world, real, study, gpu) import what they run when they run: after
# :func:`main` has set the environment (offline hub, threads), which ``huggingface_hub`` and ``datasets``
# read when they are imported (world.build and real.command import them), and so that ``kdrl-mini
# --help`` and a bad flag answer without loading them, matplotlib or scipy. The core above loads none.


def _train(args) -> int:
    flags = {"max_steps": args.max_steps, "output_dir": args.output_dir, "seed": args.seed, "threads": args.threads,
             "checkpoint_every": args.checkpoint_every}
    overrides = {**parse_set(args.set), **{k: v for k, v in flags.items() if v is not None}}
    config = args.config
    if args.preset:  # a one-GPU preset's TrainConfig (its `config:` block)
        config = load_preset(args.preset)[0]
    return commands.train(config, overrides, args.resume, args.overwrite, args.engine)


def _eval(args) -> int:
    return commands.evaluate(args.run, args.student, args.teacher, args.split, args.n)


def _reproduce(args) -> int:
    if args.preset == "list":
        return _presets(args)
    if args.preset:
        if args.full:
            raise ValueError("--preset and --full are two different studies; pass one of them")
        from .gpu.preset_study import reproduce

        overrides = parse_set(args.set)
        overrides.update({k: v for k, v in {"max_steps": args.steps, "threads": args.threads}.items() if v})
        reproduce(args.preset, overrides, args.output_dir, args.seeds, args.only, args.dry_run, engine=args.engine)
        return 0
    given = [flag for flag, value in (("--dry-run", args.dry_run), ("--set", args.set), ("--engine", args.engine))
             if value]  # flags only the preset study reads: refused, never silently dropped
    if given:
        one = len(given) == 1
        raise ValueError(f"{' and '.join(given)} only work{'s' if one else ''} with --preset NAME; drop "
                         f"{'it' if one else 'them'}, or add --preset t4-16gb|24gb|80gb-paper (kdrl-mini presets)")
    if args.full:
        from .study import v4

        if args.steps:
            raise ValueError(f"--steps {args.steps}: --full runs the pre-registered plan as written "
                             f"({v4.BASE['max_steps']} steps per run); drop --steps")
        v4.run_preregistered(args.output_dir or v4.STUDY_DIR, args.seeds, args.threads or 1, args.only)
        return 0
    from .study.brief import reproduce_brief

    return reproduce_brief(args.output_dir or "runs/reproduce", args.steps, args.only, args.seeds, args.threads)


def _smoke(args) -> int:
    from .gpu.smoke import smoke

    report = smoke(args.preset, parse_set(args.set), args.output_dir, args.steps, args.only, engine=args.engine,
                   overwrite=args.overwrite)
    return 0 if report["verdict"] != "FAIL" else 1


def _presets(args) -> int:
    from .gpu.preset_study import presets_report

    print(presets_report())
    return 0


def _build_world(args) -> int:
    from .world.build import build_world

    report = build_world(args.root, seed=args.seed, threads=args.threads)
    print(json.dumps({k: v for k, v in report.items() if k in ("teacher", "student", "build_seconds")}, indent=1))
    return 0


def _real_pair(args) -> int:
    set_fields = parse_set(args.set)  # before anything is built: a typo fails at once, with its name
    from .real.command import real_pair

    return real_pair(set_fields, args.steps, args.cache_dir, args.keep_every, args.output_dir, args.seed, args.heal,
                     args.eval_size, args.learn, args.reward_samples, args.threads)


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
    which = t.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="YAML path or shipped name: grpo, kd-fkl, kd-rkl, kdrl")
    which.add_argument("--preset", help="a one-GPU preset's config: t4-16gb, 24gb, 80gb-paper (real models, GSM8K)")
    t.add_argument("--max-steps", type=_at_least(1))
    t.add_argument("--output-dir", type=_folder)
    t.add_argument("--checkpoint-every", type=_at_least(0), help="steps between checkpoints (0 = only at the end)")
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt (trl: its latest "
                   "checkpoint-<step>/)")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in OUTPUT_DIR")
    t.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override any config field, e.g. --set beta=0.1 kl_kind=k3")
    t.add_argument("--engine", choices=["kit", "trl"], default="kit",
                   help="kit: the kit's own loop; trl: KDRLTrainer on TRL (needs the [trl] extra; grpo, kd-rkl or "
                        "kdrl; the same run folder; vLLM colocated when installed on a GPU; scale out with accelerate "
                        "launch, see docs/scaling.md)")
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
    r.add_argument("--full", action="store_true", help="the pre-registered study into data/study (resumable; "
                   "a second process started alongside shares its runs)")
    r.add_argument("--seeds", type=int, nargs="+")
    r.add_argument("--only", nargs="+", help="restrict to these variant names")
    r.add_argument("--preset", help="one GPU with a real pair on GSM8K: t4-16gb, 24gb, 80gb-paper, or list")
    r.add_argument("--dry-run", action="store_true", help="with --preset: print the plan and estimates, load nothing")
    r.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="with --preset: override config fields, "
                   "e.g. --set micro_batch_size=2")
    r.add_argument("--engine", choices=["kit", "trl"], help="with --preset: the trainer, in place of the preset's "
                   "own (its about.engine)")
    r.set_defaults(func=_reproduce)

    sm = sub.add_parser("smoke", help="a preset's first run on a card: two steps and a worst-case-length step of "
                        "each algorithm, measured time and memory per phase next to the estimate, and a verdict "
                        "(exit code 1 on FAIL)")
    sm.add_argument("--preset", required=True, help="t4-16gb, 24gb or 80gb-paper")
    sm.add_argument("--steps", type=_at_least(1), default=2)
    sm.add_argument("--output-dir", type=_folder, help="where smoke.json and the runs go (default runs/smoke-NAME)")
    sm.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override config fields, e.g. --set micro_batch_size=2")
    sm.add_argument("--engine", choices=["kit", "trl"], help="the trainer, in place of the preset's own")
    sm.add_argument("--only", nargs="+", metavar="ALGORITHM", help="only these algorithms (default: every one the "
                    "engine runs), e.g. --only kdrl")
    sm.add_argument("--overwrite", action="store_true", help="replace a smoke or run already in --output-dir")
    sm.set_defaults(func=_smoke)

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
                   help="the learning check (kdrl_mini.real.learning_check): KDRL on the healed fp32 student over a fixed "
                        "pool of 28 training prompts (answers 1..28), 6 passes; sampled reward on the pool and on held-out "
                        "test prompts before and after")
    q.add_argument("--reward-samples", type=_at_least(2), default=8,
                   help="with --learn: samples per pool prompt for the before/after reward (default 8)")
    q.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override any field of real.real_config, e.g. "
                   "--set student_quant=none lora_r=16 group_size=8")
    q.set_defaults(func=_real_pair)

    for sp in (t, e, r, b, q, sm):
        sp.add_argument("--threads", type=_at_least(1), help="torch CPU threads")
    return p


def _names_hub(args) -> bool:
    """Does the command's config name a hub id (dataset, student or teacher)? Then the run may use
    the hub (the user's own HF_HUB_OFFLINE still wins); the kit's own local world stays offline.
    A config that cannot be read counts as local: the command itself reports it, with the fix."""
    try:
        if getattr(args, "config", None):
            cfg = load_config(args.config, **parse_set(getattr(args, "set", None)))
        elif getattr(args, "run", None):
            cfg = load_config(Path(args.run) / "config.yaml")
        elif getattr(args, "student", None):
            cfg = TrainConfig(student_path=args.student, teacher_path=args.teacher or args.student)
        elif getattr(args, "preset", None) not in (None, "list"):  # reproduce --preset NAME: hub models, GSM8K
            cfg = load_preset(args.preset, **parse_set(getattr(args, "set", None)))[0]
        else:
            return False
    except (ValueError, TypeError, OSError):
        return False
    return bool(hub_names(cfg))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup(seed=getattr(args, "seed", None) or 0, threads=getattr(args, "threads", None) or 1,
          offline_hub=not _names_hub(args))
    try:
        return args.func(args)
    except (ValueError, FloatingPointError, OSError) as err:
        if isinstance(err, OSError) and err.errno in FULL + READ_ONLY:  # full disk, read-only folder
            err = write_error(err, err.filename or "a run file")
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"kdrl-mini {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
