"""The tiny world's reasoning task: a chain of additions and subtractions, one step per line.

A problem starts from a 2-digit number and adds or subtracts 1-digit numbers, solved one
operation per line, GSM8K style, ending with ``#### <answer>``::

    prompt:   "Compute 37+8-5+9.\\n"
    solution: "37+8=45\\n45-5=40\\n40+9=49\\ncheck 49-9=40\\n#### 49"   (verbose: re-checks its last step)
    concise:  "37+8=45\\n45-5=40\\n40+9=49\\n#### 49"

The world is built so that imitating the teacher and maximising the reward disagree on a
known, measurable share of the training prompts (the tension KDRL is about):

* **Blind spot inside the training distribution.** Some training chains *cross 100*: the running
  total passes 100 once, upwards, and stays there, so the answer has 3 digits. The teacher is
  trained on solutions that drop the hundreds digit at the crossing (``95+9=4``, field
  ``teacher``), so it is confidently wrong exactly where the reward pays for carrying. The
  student's warm-up shows it a few correct crossings, so exploration can find them.
* **Length pressure.** Chains have 4 or 5 operands. The teacher always writes the redundant
  ``check`` line. With the rollout budget :data:`BUDGET` (the trainer's ``max_new_tokens``,
  48 tokens) its verbose 5-operand solutions (54-55 tokens) are cut off before the answer, while
  the concise ones (40-46) fit; the 4-operand verbose ones that stay below 100 (46) still fit.
  Evaluation runs with :data:`EVAL_BUDGET` (64 tokens), where every style fits.

Splits (disjoint prompts; each eval split has 1,000 rows by default):

========== ========================================== =================================
split      prompts                                    teacher
========== ========================================== =================================
train      mix: 70% stay below 100, 30% cross 100;    trained on this distribution
           starts 10-89; half 4, half 5 operands
test       in-domain, totals stay in [0, 99]          strong
blind      in-domain, totals cross 100                fails (drops the hundreds)
ood        starts 90-99 (never a start in training),  fails (same blind spot)
           totals cross 100: the carrying rule the
           reward teaches in-domain reaches it
ood_control starts 90-99, totals stay in [0, 99]      handles it
========== ========================================== =================================

Data rows are dicts with ``prompt`` and ``answer`` (required), plus ``solution`` (verbose,
correct), ``concise`` (correct), ``teacher`` (what the teacher was trained on: verbose, hundreds
dropped), ``n_operands`` and ``crossing``. They are shipped as JSONL under ``data/`` and loaded
with :func:`kdrl_mini.tasks.files.load_split` (Hugging Face ``datasets``), which checks every row.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..tasks.files import EVAL_SPLITS, write_jsonl

BUDGET = 48  # rollout budget in tokens (the trainer's default max_new_tokens)
EVAL_BUDGET = 64  # greedy-evaluation budget (the trainer's max_new_tokens + 16)


@dataclass(frozen=True)
class TaskSpec:
    """How problems are drawn.

    n_operands: operands in a chain (4: three steps).
    first_low, first_high: inclusive range of the first (2-digit) operand.
    step_low, step_high: inclusive range of every later (1-digit) operand.
    max_total: running totals stay in [0, max_total].
    crossing: if True the running total passes 100 once, upwards, and never drops below 100
        again (so the answer has 3 digits); if False every total stays below 100.
    """

    n_operands: int = 4
    first_low: int = 10
    first_high: int = 89
    step_low: int = 1
    step_high: int = 9
    max_total: int = 99
    crossing: bool = False


IN_DOMAIN = TaskSpec(n_operands=4)
IN_DOMAIN_LONG = TaskSpec(n_operands=5)
CROSSING = TaskSpec(n_operands=4, max_total=199, crossing=True)
CROSSING_LONG = TaskSpec(n_operands=5, max_total=199, crossing=True)
# Out of domain: starting values never seen as a start (90-99), split by whether totals cross 100.
OUT_OF_DOMAIN = TaskSpec(n_operands=4, first_low=90, first_high=99, max_total=199, crossing=True)
OUT_OF_DOMAIN_LONG = TaskSpec(n_operands=5, first_low=90, first_high=99, max_total=199, crossing=True)
OOD_CONTROL = TaskSpec(n_operands=4, first_low=90, first_high=99)
OOD_CONTROL_LONG = TaskSpec(n_operands=5, first_low=90, first_high=99)

# Each split is a mixture: (spec, share of rows).
TRAIN_CROSSING_SHARE = 0.3
MIXES: dict[str, tuple[tuple[TaskSpec, float], ...]] = {
    "train": ((IN_DOMAIN, 0.35), (IN_DOMAIN_LONG, 0.35), (CROSSING, 0.15), (CROSSING_LONG, 0.15)),
    "test": ((IN_DOMAIN, 0.5), (IN_DOMAIN_LONG, 0.5)),
    "blind": ((CROSSING, 0.5), (CROSSING_LONG, 0.5)),
    "ood": ((OUT_OF_DOMAIN, 0.5), (OUT_OF_DOMAIN_LONG, 0.5)),
    "ood_control": ((OOD_CONTROL, 0.5), (OOD_CONTROL_LONG, 0.5)),
}


def running_totals(first: int, ops: list[str], nums: list[int]) -> list[int]:
    """Totals after each step of ``first op1 nums[0] op2 nums[1] ...``."""
    totals, total = [], first
    for op, x in zip(ops, nums):
        total = total + x if op == "+" else total - x
        totals.append(total)
    return totals


def fits(spec: TaskSpec, totals: list[int]) -> bool:
    """Do ``totals`` follow ``spec``'s range and crossing rule?"""
    if min(totals) < 0 or max(totals) > spec.max_total:
        return False
    if not spec.crossing:
        return max(totals) <= 99
    # Crossing: below 100 up to some step, at or above 100 from then on.
    above = [t >= 100 for t in totals]
    return above[-1] and above == sorted(above)


def worked_lines(first: int, ops: list[str], nums: list[int], totals: list[int]) -> list[str]:
    """One ``a+b=c`` line per step, the last line re-checked by the inverse operation."""
    steps, prev = [], first
    for op, x, t in zip(ops, nums, totals):
        steps.append(f"{prev}{op}{x}={t}")
        prev = t
    before_last = totals[-2] if len(totals) > 1 else first
    inverse = "+" if ops[-1] == "-" else "-"
    return steps + [f"check {totals[-1]}{inverse}{nums[-1]}={before_last}"]


def solutions(first: int, ops: list[str], nums: list[int], totals: list[int]) -> tuple[str, str]:
    """(verbose, concise) texts for the given running totals."""
    lines = worked_lines(first, ops, nums, totals)
    answer = f"#### {totals[-1]}"
    return "\n".join(lines + [answer]), "\n".join(lines[:-1] + [answer])


def make_problem(rng: random.Random, spec: TaskSpec = IN_DOMAIN) -> dict:
    """Draw one problem following ``spec`` (rejection sampling); return a data row."""
    while True:
        first = rng.randint(spec.first_low, spec.first_high)
        nums = [rng.randint(spec.step_low, spec.step_high) for _ in range(spec.n_operands - 1)]
        ops = [rng.choice("+-") for _ in range(spec.n_operands - 1)]
        totals = running_totals(first, ops, nums)
        if fits(spec, totals):
            break
    verbose, concise = solutions(first, ops, nums, totals)
    # The teacher's blind spot: it never writes the hundreds digit (totals modulo 100).
    teacher, _ = solutions(first, ops, nums, [t % 100 for t in totals])
    expr = str(first) + "".join(op + str(x) for op, x in zip(ops, nums))
    return {
        "prompt": f"Compute {expr}.\n",
        "answer": str(totals[-1]),
        "solution": verbose,
        "concise": concise,
        "teacher": teacher,
        "n_operands": spec.n_operands,
        "crossing": spec.crossing,
    }


def distinct_rows(n: int, draw, exclude: set[str] | None = None) -> list[dict]:
    """``n`` rows from ``draw()`` with distinct prompts, none of them in ``exclude``."""
    seen = set(exclude or ())
    rows = []
    while len(rows) < n:
        row = draw()
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    return rows


def make_split(n: int, seed: int, spec: TaskSpec = IN_DOMAIN, exclude: set[str] | None = None) -> list[dict]:
    """``n`` distinct problems from ``seed``, skipping any prompt in ``exclude``."""
    rng = random.Random(seed)
    return distinct_rows(n, lambda: make_problem(rng, spec), exclude)


def mix_counts(n: int, mix) -> list[int]:
    """Row counts per component of ``mix`` summing to ``n`` (largest shares get the rounding)."""
    counts = [int(n * share) for _, share in mix]
    order = sorted(range(len(mix)), key=lambda i: -mix[i][1])
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def make_mixed_split(n: int, seed: int, mix, exclude: set[str] | None = None) -> list[dict]:
    """``n`` distinct problems drawn from the components of ``mix`` in their exact shares,
    shuffled; prompts in ``exclude`` are skipped."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows = []
    for (spec, _), count in zip(mix, mix_counts(n, mix)):
        part = distinct_rows(count, lambda: make_problem(rng, spec), seen)
        seen |= {r["prompt"] for r in part}
        rows += part
    rng.shuffle(rows)
    return rows


def build_world_data(out_dir: str | Path, seed: int = 0, n_train: int = 4000, n_eval: int = 1000) -> dict[str, Path]:
    """Write ``train.jsonl`` and the :data:`EVAL_SPLITS` files (pairwise disjoint prompts);
    return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    paths = {}
    for i, name in enumerate(EVAL_SPLITS + ("train",)):
        n = n_train if name == "train" else n_eval
        rows = make_mixed_split(n, seed + 1 + i, MIXES[name], exclude=taken)
        taken |= {r["prompt"] for r in rows}
        paths[name] = out_dir / f"{name}.jsonl"
        write_jsonl(paths[name], rows)
    return paths
