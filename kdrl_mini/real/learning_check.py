"""Does a short KDRL run raise the real pair's reward on CPU? The measurement, as a recipe.

The healed SmolLM2 student (:func:`kdrl_mini.real.pair.materialize_healed`) answers a few word problems
right, so KDRL has something to reinforce. A fresh prompt every step (the shipped ``real-pair``
run) gives a reward curve dominated by which prompts were drawn. Here the run trains on a fixed
**pool** of training prompts instead, several passes over it, and the reward is measured on the
same pool before and after with many samples per prompt, paired by prompt:

- pool (:func:`write_pool`, split ``pool`` of the word-problem folder): 28 training problems from
  row 200 on (the heal's teacher answered rows 0-199, so the student has seen no answer to them),
  the first problem for each answer 1, 2, ..., 28. With every answer different, a student that
  learns to say one frequent number gains at most 1/28: a first version of this check, on rows
  200-231 as they come (answers 11, 10 and 16 on 15 of 32 rows), raised the pool reward by
  shifting the student's answers towards 16 and 10, while its accuracy on test prompts fell;
- run: KDRL (k2 in the loss, beta 0.05) on the fp32 healed student + LoRA r=16, 8-bit teacher,
  4 prompts x G=8 at temperature 0.7, lr 5e-4, 42 steps = 6 passes over the pool (``LEARN``);
- measure: ``samples`` completions per pool prompt at the run's temperature and budget
  (:func:`kdrl_mini.rollout.sampled_eval`), before and after, each from the same seed, inside
  ``torch.random.fork_rng`` so measuring does not change the training run; the same on the
  first 28 test prompts (held out), and the most frequent answers before and after.

It checks that the training loop raises the reward it optimises on a real pretrained model, and
whether that carries over to prompts it did not train on.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import torch

from ..config import TrainConfig
from ..rewards import extract_answer
from ..rollout import sampled_eval
from ..runs.metrics import read_metrics
from ..runs.plots import plt
from ..tasks.files import read_jsonl, write_jsonl
from .pair import real_config

LEARN_POOL = "pool"
POOL_FROM, POOL_ANSWERS = 200, 28  # train rows from 200 on, one problem per answer 1..28
LEARN = dict(student_quant="none", lora_r=16, lora_alpha=32, group_size=8, prompts_per_step=4, lr=5e-4,
             temperature=0.7, max_steps=42, eval_size=50)
RESULT = "pool_reward.json"


def pool_rows(train: list[dict], start: int = POOL_FROM, answers: int = POOL_ANSWERS) -> list[dict]:
    """The first row with each answer 1..``answers`` among ``train[start:]``, ordered by answer."""
    first = {}
    for row in train[start:]:
        first.setdefault(str(row["answer"]).strip(), row)
    missing = [a for a in range(1, answers + 1) if str(a) not in first]
    if missing:
        raise ValueError(f"no training problem from row {start} on has answer {missing[0]}; the pool needs answers "
                         f"1..{answers}: rebuild the word problems (real.materialize_pair) or lower POOL_ANSWERS")
    return [first[str(a)] for a in range(1, answers + 1)]


def write_pool(data_dir) -> Path:
    """``data_dir/pool.jsonl`` from ``data_dir/train.jsonl`` (:func:`pool_rows`), rewritten only if it
    differs, so it is a split of the folder the config names."""
    path = Path(data_dir) / "pool.jsonl"
    rows = pool_rows(read_jsonl(Path(data_dir) / "train.jsonl"))
    if not path.is_file() or read_jsonl(path) != rows:
        write_jsonl(path, rows)
    return path


def learn_config(cache_dir, keep_every: int = 2, **overrides) -> TrainConfig:
    """:func:`kdrl_mini.real.pair.real_config` on the healed student with ``LEARN`` and the pool as its
    train split, read from the config's word-problem folder (``overrides`` win: e.g. ``max_steps``,
    ``output_dir``, ``seed``, ``train_split``)."""
    base = real_config(cache_dir, keep_every, healed=True)
    return base.replace(**{**LEARN, "dataset": base.data_dir, "train_split": LEARN_POOL, "test_split": "test",
                           "ood_split": "ood", "output_dir": str(Path(base.output_dir).with_name("kdrl-learn")),
                           **overrides})


def run(trainer, samples: int, train) -> tuple[list[dict], dict]:
    """The check around one training call: :func:`measure` before, ``train()`` (returns the log),
    :func:`measure` after, then ``pool_reward.json`` (:func:`write_result`) and its figure in the
    run folder. Returns (log, result)."""
    before = measure(trainer, samples)
    log = train()
    result = write_result(trainer.cfg.output_dir, samples, before, measure(trainer, samples), log, trainer.cfg)
    figure(trainer.cfg.output_dir)
    return log, result


def pool_reward(trainer, samples: int = 8, seed: int = 1234, rows: list[dict] | None = None) -> dict:
    """Sampled reward on ``rows`` (default: the trainer's train prompts, the pool) with the run's
    temperature, budget and prompt format, plus the 5 most frequent final answers; the global RNG
    is restored afterwards."""
    cfg = trainer.cfg
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = sampled_eval(trainer.world.student, trainer.world.tokenizer,
                           trainer.world.train if rows is None else rows, samples,
                           cfg.max_new_tokens, cfg.temperature, chat_template=cfg.chat_template,
                           suffix=cfg.prompt_suffix, checker=cfg.answer_checker, keep_texts=True)
    trainer.world.student.train()
    finals = Counter(extract_answer(text) for text in out.pop("texts"))
    return {**out, "top_answers": [[a, k] for a, k in finals.most_common(5)]}


def measure(trainer, samples: int = 8, pool: list[dict] | None = None, held_out: list[dict] | None = None) -> dict:
    """:func:`pool_reward` on the pool (default: the train split) and on held-out prompts (default:
    as many test prompts)."""
    pool = trainer.world.train if pool is None else pool
    held_out = trainer.world.test[:len(pool)] if held_out is None else held_out
    return {"pool": pool_reward(trainer, samples, rows=pool), "test": pool_reward(trainer, samples, rows=held_out)}


def paired_change(before: list[float], after: list[float]) -> dict:
    """Mean per-prompt change after - before, its standard error over prompts, and how many
    prompts went up / down."""
    if len(before) != len(after) or len(before) < 2:
        raise ValueError(f"need two equal lists of at least 2 per-prompt rewards, got {len(before)} and {len(after)}")
    d = [a - b for a, b in zip(after, before)]
    return {"mean": statistics.fmean(d), "se": statistics.stdev(d) / len(d) ** 0.5,
            "up": sum(x > 0 for x in d), "down": sum(x < 0 for x in d), "n": len(d)}


def per_pass(rows: list[dict], steps_per_pass: int, key: str = "reward") -> list[float]:
    """Mean training ``key`` over each pass through the pool (``steps_per_pass`` steps each)."""
    train = [r[key] for r in rows if r.get("kind") == "train"]
    return [statistics.fmean(train[i:i + steps_per_pass]) for i in range(0, len(train), steps_per_pass)]


def write_result(run_dir, samples: int, before: dict, after: dict, log: list[dict], cfg: TrainConfig) -> dict:
    """``pool_reward.json`` in the run folder: :func:`measure` before and after, the paired change
    on the pool and on the held-out prompts, and the training reward / exact KL per pass."""
    steps_per_pass = max(len(before["pool"]["per_row"]) // cfg.prompts_per_step, 1)
    result = {"pool": cfg.train_split, "samples": samples, "steps_per_pass": steps_per_pass,
              "before": before, "after": after,
              "change": {where: paired_change(before[where]["per_row"], after[where]["per_row"]) for where in before},
              "reward_per_pass": per_pass(log, steps_per_pass),
              "exact_kl_per_pass": per_pass(log, steps_per_pass, "exact_kl")}
    Path(run_dir, RESULT).write_text(json.dumps(result, indent=1))
    return result


def summary(result: dict) -> str:
    """The lines ``kdrl-mini real-pair --learn`` prints at the end."""
    lines = []
    for where, label in (("pool", f"pool ({result['pool']}, trained on)"), ("test", "held-out test prompts")):
        b, a, c = result["before"][where], result["after"][where], result["change"][where]
        lines.append(f"{label}: sampled reward {b['per_sample']:.3f} before -> {a['per_sample']:.3f} after "
                     f"({result['samples']} samples per prompt); paired change {c['mean']:+.3f} (SE {c['se']:.3f}; "
                     f"{c['up']} prompts up, {c['down']} down of {c['n']})")
        lines.append(f"    most frequent answers before {b['top_answers'][:3]}, after {a['top_answers'][:3]}")
    lines.append("training reward per pass over the pool: " + ", ".join(f"{x:.3f}" for x in result["reward_per_pass"]))
    return "\n".join(lines)


def figure(run_dir, path=None):
    """Training reward per step and per pass over the pool, with the pool reward measured before and
    after (``pool_reward.json``); saved to ``path`` (default ``run_dir/pool_reward.png``)."""
    result = json.loads(Path(run_dir, RESULT).read_text())
    steps, _ = read_metrics(run_dir)
    per_pass_steps = result["steps_per_pass"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot([r["step"] for r in steps], [r["reward"] for r in steps], color="lightgrey", lw=1,
            label="training reward per step (4 prompts x 8 samples)")
    centres = [per_pass_steps * (k + 0.5) + 0.5 for k in range(len(result["reward_per_pass"]))]
    ax.plot(centres, result["reward_per_pass"], "o-", label=f"mean per pass over the pool ({per_pass_steps} steps)")
    for key, x, marker in (("before", 0, "s"), ("after", len(steps) + 1, "D")):
        ax.plot([x], [result[key]["pool"]["per_sample"]], marker, color="black", ms=7)
        ax.plot([x], [result[key]["test"]["per_sample"]], marker, color="tab:red", ms=7)
    ax.plot([], [], "s", color="black", label=f"sampled reward on the pool, {result['samples']} per prompt: "
                                              "before (step 0), after (end)")
    ax.plot([], [], "s", color="tab:red", label="the same on as many held-out test prompts")
    c = result["change"]["pool"]
    b, a = result["before"], result["after"]
    ax.set(xlabel="training step", ylabel="reward (share of right answers)",
           title=f"KDRL on the healed SmolLM2 student, trained on split {result['pool']!r}\n"
                 f"pool {b['pool']['per_sample']:.3f} -> {a['pool']['per_sample']:.3f} (paired {c['mean']:+.3f}, "
                 f"SE {c['se']:.3f}); held-out test {b['test']['per_sample']:.3f} -> {a['test']['per_sample']:.3f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = path or Path(run_dir, "pool_reward.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
