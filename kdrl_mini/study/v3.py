"""Study v3's plan: a world where the methods act within the budget (issue 22), fixed before its runs.

The pilot (``data/study_v3/pilot``, development seeds 1001+) chose what is set here: the shipped
student given 60 more warm-up steps (``models/student-w60``: greedy test ~0.3-0.4 at the rollout
budget), full fp32 weights, an fp32 teacher for scoring, temperature 0.7, 150 steps with a 10-step
warm-up and a cosine learning rate, and each method at the learning rate under which it learns
alone. Every accuracy is greedy at the rollout budget (48 tokens), on the final 1,000 rows of
each split; the 200-row evaluations every 25 steps draw the curves. ``mix`` is drawn like
``train`` (30% of chains cross 100), so ``test`` and ``blind`` are its strata.

The 4-bit NF4 + LoRA student with an 8-bit teacher (QLoRA, the product configuration) is one arm,
so what it costs KDRL is measured, not assumed.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from ..config import load_config
from ..rollout import greedy_eval
from ..runs.loading import load_world
from ..runs.folder import read_mapping
from ..runs.metrics import read_metrics
from ..utils import setup
from . import v3_claims
from .runner import collect, run_study

STUDY_DIR = "data/study_v3"
BETA = 0.01                 # KDRL's KL coefficient (k2 in the loss): 0.02 was unstable over pilot seeds, >= 0.1 erased `blind`
GRPO_LR = 5e-5              # full-weight GRPO: 1e-4 degrades test, 3e-4 collapses (pilot)
FKL_LR = 1e-3
RKL_LR = 3e-4
QLORA_LR = 3e-4
SPLITS = "mix,test,blind,ood,test@64"  # test@64: where the teacher is right (0.99), for the KD gate

BASE = {
    "student_path": "data/models/student-w60", "student_quant": "none", "lora_r": 0, "teacher_quant": "none",
    "temperature": 0.7, "max_new_tokens": 48, "max_steps": 150, "lr_schedule": "cosine", "lr_warmup_steps": 10,
    "lr_floor": 0.0, "log_exact_kl": False, "eval_every": 25, "eval_size": 200, "final_eval_size": 1000,
    "eval_extra_tokens": 0, "eval_splits": SPLITS, "eval_batch_size": 500, "checkpoint_every": 25,
}
FKL_SAMPLING = {"kd_fkl_group_size": 2, "kd_fkl_prompts_per_step": 32}  # 64 teacher samples of 32 prompts

VARIANTS = {
    "grpo": {"algorithm": "grpo", "lr": GRPO_LR},
    "kd-fkl": {"algorithm": "kd-fkl", "lr": FKL_LR, **FKL_SAMPLING},
    "kd-rkl": {"algorithm": "kd-rkl", "lr": RKL_LR},
    "kdrl": {"algorithm": "kdrl", "lr": GRPO_LR, "beta": BETA},
    "kdrl-mask": {"algorithm": "kdrl", "lr": GRPO_LR, "beta": BETA, "kd_strategy": "incorrect"},
    "kd-then-grpo": {"algorithm": "kd-then-grpo", "lr": FKL_LR, "grpo_stage_lr": GRPO_LR, **FKL_SAMPLING},
    "kdrl-qlora": {"algorithm": "kdrl", "lr": QLORA_LR, "beta": BETA, "student_quant": "4bit", "lora_r": 16,
                   "lora_alpha": 32, "teacher_quant": "8bit"},
}
PILOT_SEEDS = [1001, 1002]
# The pilot ran the KDRL arms at the exploration's beta (0.02); its probes then chose 0.01.
PILOT_VARIANTS = {k: {**v, "beta": 0.02} if "beta" in v else v for k, v in VARIANTS.items()}
STUDY_SEEDS = list(range(1, 11))  # 10 seeds: >= 0.93 power at the SESOI (0.05) at the strictest Holm level if SD <= 0.03
# Pilot-only probes: KDRL's coefficient below the 0.02 the exploration settled on.
PILOT_PROBES = {f"kdrl-beta{b:g}": {**VARIANTS["kdrl"], "beta": b} for b in (0.005, 0.01)}
# ... and the sequential baseline: a shorter KD stage, or a GRPO stage at a higher learning rate.
PILOT_PROBES["kd-then-grpo-switch30"] = {**VARIANTS["kd-then-grpo"], "switch_step": 30}
PILOT_PROBES["kd-then-grpo-grpolr2e-4"] = {**VARIANTS["kd-then-grpo"], "grpo_stage_lr": 2e-4}


def base_config(**overrides):
    """The study's TrainConfig of one variant (``VARIANTS[name]`` as ``overrides``)."""
    return load_config("kdrl", **{**BASE, **overrides})


def summarize(run_dir: str | Path) -> dict:
    """One finished run's numbers (``final.json``): per split the final greedy accuracy (1,000 rows),
    length and truncation, and the mean of the 200-row curve; the training reward of the last 20%."""
    steps, evals = read_metrics(run_dir)
    out = {"steps": len(steps), "train_seconds": sum(s["step_time"] for s in steps)}
    for split in dict.fromkeys(e["split"] for e in evals):
        rows = [e for e in evals if e["split"] == split]
        final = rows[-1]
        out.update({f"{split}_accuracy": final["eval_accuracy"], f"{split}_length": final["eval_length"],
                    f"{split}_truncated": final["eval_truncated"], f"{split}_n": final["eval_n"],
                    f"{split}_curve": statistics.fmean(e["eval_accuracy"] for e in rows[:-1] or rows)})
    key = "teacher_reward" if all(s.get("reward") != s.get("reward") for s in steps) else "reward"
    fifth = max(1, len(steps) // 5)
    for name, part in (("train_reward_first", steps[:fifth]), ("train_reward", steps[-fifth:])):
        values = [s[key] for s in part if s.get(key) == s.get(key)]
        out[name] = statistics.fmean(values) if values else float("nan")
    return out


@torch.no_grad()
def baseline(role: str = "student") -> dict:
    """The untrained student's (or the teacher's) accuracy, length and truncation on every study
    split, decoded exactly as the runs' final evaluation (greedy, 48 tokens, 1,000 rows)."""
    cfg = base_config()
    world = load_world(cfg)
    model = world.student if role == "student" else world.teacher
    out = {}
    for split in cfg.eval_split_names():
        name, budget = cfg.eval_budget(split)
        r = greedy_eval(model, world.tokenizer, world.splits[name][:cfg.final_eval_size], max_new_tokens=budget,
                        batch_size=cfg.eval_batch_size)
        out.update({f"{split}_accuracy": r["accuracy"], f"{split}_length": r["mean_length"],
                    f"{split}_truncated": r["truncated"], f"{split}_n": r["n"]})
    return out


def run_pilot(out: str | Path = f"{STUDY_DIR}/pilot", seeds: list[int] | None = None, only: list[str] | None = None):
    """The pilot on development seeds: every variant (or ``only``) with the study's settings."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for role in ("student", "teacher"):
        path = out.parent / f"{'untrained' if role == 'student' else 'teacher'}.json"
        if not path.exists():
            path.write_text(json.dumps(baseline(role), indent=1))
    plan = {k: v for k, v in {**PILOT_VARIANTS, **PILOT_PROBES}.items() if (k in only if only else k in VARIANTS)}
    return run_study(out, plan, seeds or PILOT_SEEDS, base_config(), summarize=summarize)


def gates(records: list[dict], untrained: dict, teacher: dict) -> list[dict]:
    """Item 1 of issue 22, from finished runs: each gate's value (mean over seeds) and whether it holds."""
    def mean(variant, key):
        values = [r[key] for r in records if r["variant"] == variant and key in r]
        return statistics.fmean(values) if values else float("nan")

    gap = teacher["test@64_accuracy"] - untrained["test@64_accuracy"]
    kd = max(mean("kd-fkl", "test@64_accuracy"), mean("kd-rkl", "test@64_accuracy"))
    rows = [("KD closes >= 50% of the untrained-to-teacher gap on test (at 64 tokens, where the teacher is right)",
             (kd - untrained["test@64_accuracy"]) / gap, 0.5),
            ("GRPO raises blind by >= 0.05", mean("grpo", "blind_accuracy") - untrained["blind_accuracy"], 0.05),
            ("GRPO does not lose test", mean("grpo", "test_accuracy") - untrained["test_accuracy"], 0.0),
            ("GRPO raises the training reward (last 20% of steps - first 20%)",
             mean("grpo", "train_reward") - mean("grpo", "train_reward_first"), 0.0),
            ("the teacher stays wrong on blind (at most 0.05)", -teacher["blind_accuracy"], -0.05)]
    rows += [(f"untrained student on {s} >= 0.05", untrained[f"{s}_accuracy"], 0.05)
             for s in ("mix", "test", "blind")]
    return [{"gate": g, "value": round(v, 4), "threshold": t, "holds": v >= t} for g, v, t in rows]


def run_preregistered(out: str | Path = STUDY_DIR, seeds: list[int] | None = None, threads: int | None = 1,
                      only: list[str] | None = None) -> list[dict]:
    """``kdrl-mini reproduce --full``: the pre-registered study (``PREREGISTRATION.md`` must exist),
    every variant (or ``only``) x ``STUDY_SEEDS`` (or ``seeds``), resumable and shareable by two
    workers; then ``table.md``, ``claims.md`` and ``forest.png`` from every finished run."""
    out = Path(out)
    if not (out / "PREREGISTRATION.md").is_file():
        raise FileNotFoundError(f"{out / 'PREREGISTRATION.md'} is missing: the study runs only after its plan is committed")
    baselines(out)  # read by the report: refused before any run, not after the last
    plan = {k: v for k, v in VARIANTS.items() if not only or k in only}
    run_study(out, plan, seeds or STUDY_SEEDS, base_config(threads=threads), summarize=summarize)
    return report(out)


def baselines(out: str | Path = STUDY_DIR) -> tuple[dict, dict]:
    """(untrained student, teacher) scores of ``out/untrained.json`` and ``out/teacher.json``, written by the
    pilot; a missing or damaged file is one line naming it."""
    found = []
    for name in ("untrained.json", "teacher.json"):
        path = Path(out) / name
        pilot = "`python -m kdrl_mini.study.v3 pilot`, which writes it before any run"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (the {name[:-5]} scores the tables compare with); restore it "
                                    f"(e.g. git checkout {path}) or run {pilot}")
        found.append(read_mapping(path, f"restore it (e.g. git checkout {path}), or delete it and run {pilot}"))
    return found[0], found[1]


def report(out: str | Path = STUDY_DIR) -> list[dict]:
    """Tables, verdicts and forest plot from every finished study run (``v3_claims.write_outputs``)."""
    out = Path(out)
    records = collect(out)
    variants, verdicts = v3_claims.write_outputs(out, records, *baselines(out))
    print(variants + "\n\n" + verdicts)
    return records


def main(argv: list[str]) -> int:
    """``python -m kdrl_mini.study.v3 pilot|probes|study|report|gates [seed ... | study]``: the command, then the
    gates of issue 22 on the pilot's runs (or the study's, after ``study``/``report`` or with ``gates study``).
    A bad argument or a missing or damaged study file is one line (exit code 2)."""
    setup(threads=1)
    command, args = (argv or [""])[0], argv[1:]
    pilot_dir = Path(STUDY_DIR) / "pilot"
    try:
        if command not in ("pilot", "probes", "study", "report", "gates"):
            raise ValueError(f"unknown command {command!r}; name one of pilot, probes, study, report, gates")
        seeds = None if command == "gates" else [int(s) for s in args] or None
        if command in ("pilot", "probes"):
            run_pilot(pilot_dir, seeds, list(PILOT_PROBES) if command == "probes" else None)
        elif command == "study":
            run_preregistered(STUDY_DIR, seeds)
        elif command == "report":
            report(STUDY_DIR)
        finished = collect(STUDY_DIR if command in ("study", "report") or args == ["study"] else pilot_dir)
        rows = gates(finished, *baselines(STUDY_DIR))
    except (ValueError, OSError) as err:
        print(f"{f'python -m kdrl_mini.study.v3 {command}'.strip()}: error: {err}", file=sys.stderr)
        return 2
    for row in rows:
        verdict = "holds" if row["holds"] else "FAILS"
        print(f"{verdict:>5}  {row['gate']}: {row['value']} (threshold {row['threshold']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
