"""Measuring a built tiny world: accuracies with the kit's reward and with plain ``transformers``,
the gates of issue 12, and ``models/README.md`` written from the report."""

from __future__ import annotations

from pathlib import Path

import torch

from transformers import AutoModelForCausalLM, AutoTokenizer

from ..rewards import correctness_reward
from ..rollout import greedy_eval, sampled_eval
from ..tasks.files import EVAL_SPLITS
from . import task
from .specs import GROUP, STUDENT_SPEC, TEACHER_SPEC


def sampled_accuracy(model, tokenizer, rows: list[dict], group: int = GROUP,
                     max_new_tokens: int = task.BUDGET, batch_prompts: int = 50) -> dict:
    """Per-sample accuracy (temperature 1) and pass@group over ``rows`` (:func:`rollout.sampled_eval`)."""
    out = sampled_eval(model, tokenizer, rows, group, max_new_tokens, temperature=1.0, batch_prompts=batch_prompts)
    return {k: out[k] for k in ("per_sample", f"pass@{group}", "n")}



def plain_hf_eval(folder: Path, rows: list[dict], max_new_tokens: int, batch_size: int = 100) -> list[dict]:
    """Greedy decoding with nothing but ``transformers`` on a saved folder: per row, whether the
    answer is right (the kit's reward), the completion length (EOS counted) and truncation."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        enc = tok([r["prompt"] for r in chunk], return_tensors="pt", padding=True)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        for row, completion in zip(chunk, ids[:, enc["input_ids"].shape[1]:].tolist()):
            n = completion.index(tok.eos_token_id) + 1 if tok.eos_token_id in completion else len(completion)
            text = tok.decode(completion[:n], skip_special_tokens=True)
            out.append({"correct": correctness_reward(text, row["answer"]), "length": n,
                        "truncated": tok.eos_token_id not in completion, "n_operands": row["n_operands"], "text": text})
    return out


def summarise(per_row: list[dict]) -> dict:
    """Accuracy, length and truncation of ``plain_hf_eval`` rows, overall and per chain length."""
    def stats(rs):
        return {"accuracy": sum(r["correct"] for r in rs) / len(rs), "mean_length": sum(r["length"] for r in rs) / len(rs),
                "truncated": sum(r["truncated"] for r in rs) / len(rs), "n": len(rs)}
    by_len = {f"{k}_operands": stats([r for r in per_row if r["n_operands"] == k])
              for k in sorted({r["n_operands"] for r in per_row})}
    return {**stats(per_row), **by_len, "samples": [r["text"] for r in per_row[:2]]}


def evaluate_model(model, tok, folder: Path, rows: dict[str, list[dict]], sampled: bool) -> dict:
    """Every eval split at both budgets: the kit's greedy accuracy (``greedy_eval``) beside the
    plain-``transformers`` re-measurement of the saved folder; with ``sampled`` also per-sample
    accuracy and pass@G at the rollout budget."""
    result = {}
    for split in EVAL_SPLITS:
        for budget in (task.EVAL_BUDGET, task.BUDGET):
            kit = greedy_eval(model, tok, rows[split], max_new_tokens=budget)
            plain = summarise(plain_hf_eval(folder, rows[split], budget))
            result[f"{split}@{budget}"] = {"kit_accuracy": kit["accuracy"], **plain}
        if sampled:
            torch.manual_seed(0)
            result[f"{split}@{task.BUDGET}"]["sampled"] = sampled_accuracy(model, tok, rows[split])
    return result


def measure_gates(report: dict) -> list[dict]:
    """The world's gates (issue 12), each with its measured value and whether it holds."""
    t, s = report["teacher"]["eval"], report["student"]["eval"]
    E, B = task.EVAL_BUDGET, task.BUDGET
    blind = s[f"blind@{B}"]["sampled"]
    margin = t[f"ood_control@{E}"]["accuracy"] - t[f"ood@{E}"]["accuracy"]
    hf_equal = all(m[k]["kit_accuracy"] == m[k]["accuracy"] for m in (t, s) for k in m)
    size = report["teacher"]["size_mb"] + report["student"]["size_mb"]
    five = "5_operands"
    gates = [
        ("teacher test accuracy (greedy)", t[f"test@{E}"]["accuracy"], ">= 0.95", t[f"test@{E}"]["accuracy"] >= 0.95),
        ("teacher blind accuracy (greedy)", t[f"blind@{E}"]["accuracy"], "<= 0.05", t[f"blind@{E}"]["accuracy"] <= 0.05),
        ("teacher ood_control - ood (greedy)", margin, ">= 0.5", margin >= 0.5),
        ("student test accuracy (greedy)", s[f"test@{E}"]["accuracy"], "in [0.15, 0.30]",
         0.15 <= s[f"test@{E}"]["accuracy"] <= 0.30),
        ("student blind per-sample accuracy (T=1)", blind["per_sample"], "in [0.02, 0.15]",
         0.02 <= blind["per_sample"] <= 0.15),
        (f"student blind pass@{GROUP} (T=1)", blind[f"pass@{GROUP}"], ">= 0.15", blind[f"pass@{GROUP}"] >= 0.15),
        (f"teacher 5-operand test rows truncated at {B} tokens", t[f"test@{B}"][five]["truncated"], ">= 0.9",
         t[f"test@{B}"][five]["truncated"] >= 0.9),
        ("plain transformers generate == kit greedy_eval (every split, budget, model)", float(hf_equal), "== 1", hf_equal),
        ("models together (MB)", size, "< 25", size < 25),
    ]
    return [{"gate": g, "value": round(v, 4), "rule": rule, "passed": bool(ok)} for g, v, rule, ok in gates]


def _model_rows(report: dict) -> list[str]:
    E, B = task.EVAL_BUDGET, task.BUDGET
    rows = []
    for name in ("teacher", "student"):
        ev = report[name]["eval"]
        cells = [f"{ev[f'{s}@{E}']['accuracy']:.3f}" for s in EVAL_SPLITS]
        cells += [f"{ev[f'test@{B}']['accuracy']:.3f}", f"{ev[f'test@{B}']['truncated']:.2f}",
                  f"{ev[f'test@{E}']['mean_length']:.1f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def _schedule_note(report: dict) -> str:
    """A world built before the build used ``schedules.warmup_cosine`` says that a rebuild differs."""
    if report.get("lr_schedule") == "warmup_cosine":
        return ""
    return ("\nIt was built with the build's own earlier learning-rate schedule (a warm-up multiplying the cosine,\n"
            "commit 489b607); `build-world` now trains with the kit's one warm-up + cosine schedule\n"
            "(`kdrl_mini.schedules.warmup_cosine`), so a rebuild draws a different world, gated anew.")


def models_readme(report: dict) -> str:
    """``models/README.md`` from the build report (every number measured by the build)."""
    E, B = task.EVAL_BUDGET, task.BUDGET
    t, s = report["teacher"], report["student"]
    gates = [f"| {g['gate']} | {g['value']:.3f} | {g['rule']} | {'yes' if g['passed'] else '**NO**'} |"
             for g in report["gates"]]
    blind = s["eval"][f"blind@{B}"]["sampled"]
    test_sampled = s["eval"][f"test@{B}"]["sampled"]
    sizes = ", ".join(f"`{k}` {report['split_sizes'][k]:,}" for k in EVAL_SPLITS)
    return f"""# The tiny world: a teacher with a blind spot, a weak student

Built by `kdrl-mini build-world --seed {report['seed']}` (equivalently
`kdrl_mini.world.build.build_world(root, seed={report['seed']})`) in {report['build_seconds'] / 60:.0f} minutes on one CPU
thread (teacher {report['teacher_seconds'] / 60:.0f} min, student {(report['train_seconds'] - report['teacher_seconds']) / 60:.0f} min, the rest measuring).{_schedule_note(report)}
Every number below is in `world_report.json` beside this file. Accuracies are decoded
greedily and scored with `kdrl_mini.rewards`, on every row of each eval split ({sizes};
`train` has {report['split_sizes']['train']:,} prompts), at the
evaluation budget of {E} new tokens unless a column says {B} (the rollout budget, the trainer's
`max_new_tokens`). The build stops at validation checks, never at a wall-clock limit.

## The task and its tension (see `kdrl_mini/world/task.py`)
Chains like `Compute 37+8-5+9.` (4 or 5 operands, starts 10-89), one step per line, `#### <answer>`.
- **Blind spot inside the training distribution.** 30% of `train` chains pass 100 (and stay
  above). The teacher was trained on solutions that drop the hundreds digit (`95+9=4`), so it is
  wrong exactly there (`blind`), and also on chains starting at 90-99 that pass 100 (`ood`),
  while it handles 90-99 starts that stay below 100 (`ood_control`). The reward pays for the
  carry; the student saw a few correct carries in its warm-up ({report['plan']['student_crossing_share']:.0%} of its rows).
- **Length pressure.** The teacher always adds a redundant `check` line. At {B} tokens its
  5-operand solutions (54 tokens) are cut off before the answer, while concise ones (40-46)
  fit: copying the teacher's style costs reward on those prompts during RL.

## Gates (issue 12)

| gate | value | rule | holds |
|---|---|---|---|
{chr(10).join(gates)}

## Models

| model | test | blind | ood | ood_control | test @{B} | truncated @{B} | test length |
|---|---|---|---|---|---|---|---|
{chr(10).join(_model_rows(report))}

Student sampling at temperature 1 and {B} tokens, {GROUP} samples per prompt: `blind` per-sample
{blind['per_sample']:.3f}, pass@{GROUP} {blind[f'pass@{GROUP}']:.3f}; `test` per-sample {test_sampled['per_sample']:.3f},
pass@{GROUP} {test_sampled[f'pass@{GROUP}']:.3f}.

- Outside the training starts (90-99) the untrained student is near the floor on both `ood`
  ({s['eval'][f'ood@{E}']['accuracy']:.3f}) and `ood_control` ({s['eval'][f'ood_control@{E}']['accuracy']:.3f}): what a method adds there is transfer, read against
  these baselines.
- Both are `LlamaForCausalLM` with the same character-level tokenizer ({report['vocab_size']} tokens,
  `tokenizer/`, also saved beside each model). Teacher: {t['params']:,} parameters (hidden
  {TEACHER_SPEC.hidden_size}, {TEACHER_SPEC.num_hidden_layers} layers), {t['size_mb']:.1f} MB, {t['steps_trained']} SFT steps,
  stopped at the first validation check with accuracy >= {report['plan']['teacher_stop']} on chains below 100.
  Student: {s['params']:,} parameters (hidden {STUDENT_SPEC.hidden_size}, {STUDENT_SPEC.num_hidden_layers} layers), {s['size_mb']:.1f} MB,
  {s['steps_trained']} warm-up steps on a 50/50 mix of concise and verbose correct solutions, stopped at
  the first check (every {report['plan']['student_eval_every']} steps) with greedy validation accuracy >= {report['plan']['student_stop_test']}
  on chains below 100 and per-sample accuracy >= {report['plan']['student_stop_blind']} on crossing chains.
- Every accuracy above is measured twice: by the kit (`kdrl_mini.rollout.greedy_eval` on the
  model in memory) and by plain `transformers` on the saved folder
  (`AutoModelForCausalLM.from_pretrained(...).generate(do_sample=False)`, scored with
  `kdrl_mini.rewards`); the gate "plain transformers generate == kit" compares the two on every
  split, budget and model (`kit_accuracy` vs `accuracy` in the report).
- Budgets: the length pressure shows in training rewards (rollouts at {B} tokens) and in any
  evaluation at {B} tokens, where the teacher scores {t['eval'][f'test@{B}']['accuracy']:.3f} on `test`
  ({t['eval'][f'test@{B}']['4_operands']['accuracy']:.3f} on 4-operand rows, {t['eval'][f'test@{B}']['5_operands']['accuracy']:.3f} on 5-operand rows); at the
  evaluation budget ({E}) every style fits, so copying the teacher costs reward, not eval accuracy.
  A study that wants the cost to show in accuracy should also evaluate at {B}.
- Load with `AutoModelForCausalLM.from_pretrained("data/models/teacher")` and
  `AutoTokenizer.from_pretrained("data/models/teacher")`, or through `kdrl_mini.models`
  (`load_teacher(path, "8bit")`, `load_student(path, "4bit", LoraSpec())`).

Teacher on `test` and on `blind`:

```
{t['eval'][f'test@{E}']['samples'][0]}
```
```
{t['eval'][f'blind@{E}']['samples'][0]}
```

Student on `test` and on `blind`:

```
{s['eval'][f'test@{E}']['samples'][0]}
```
```
{s['eval'][f'blind@{E}']['samples'][0]}
```
"""
