"""The tiny world's reasoning task: a chain of additions and subtractions, one step per line.

A problem starts from a 2-digit number and adds or subtracts 1-digit numbers (in-domain: 4
operands, so 3 steps), solved one operation per line, GSM8K style, ending with ``#### <answer>``::

    prompt:   "Compute 37+8-5+9.\\n"
    teacher:  "37+8=45\\n45-5=40\\n40+9=49\\ncheck 49-9=40\\n#### 49"   (re-checks its last step)
    concise:  "37+8=45\\n45-5=40\\n40+9=49\\n#### 49"

The teacher is trained on the verbose form, so its answers are longer than needed, as real
reasoning teachers' are; the student's warm-up uses the concise form. The out-of-domain split
starts from 90-99 and lets totals cross 100 (3-digit numbers), which no model saw in training.

Data rows are dicts with ``prompt`` and ``answer`` (required), plus ``solution`` (verbose),
``concise`` and ``n_operands``. They are shipped as JSONL under ``data/`` and loaded with
:func:`load_split` (Hugging Face ``datasets``), which checks every row.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "test", "ood")
REQUIRED_FIELDS = ("prompt", "answer")


@dataclass(frozen=True)
class TaskSpec:
    """How problems are drawn.

    n_operands: operands in a chain (4: three steps).
    first_low, first_high: inclusive range of the first (2-digit) operand.
    step_low, step_high: inclusive range of every later (1-digit) operand.
    max_total: running totals stay in [0, max_total].
    """

    n_operands: int = 4
    first_low: int = 10
    first_high: int = 89
    step_low: int = 1
    step_high: int = 9
    max_total: int = 99


IN_DOMAIN = TaskSpec(n_operands=4)
# Out of domain: starting values never seen as a start (90-99) and totals that cross 100
# (3-digit numbers). Longer chains were tried first: every model failed them outright (the
# teacher always stops after three steps), which leaves nothing to compare.
OUT_OF_DOMAIN = TaskSpec(n_operands=4, first_low=90, first_high=99, max_total=109)


def make_problem(rng: random.Random, spec: TaskSpec = IN_DOMAIN) -> dict:
    """Draw one problem whose running total stays in [0, max_total]; return a data row."""
    while True:
        nums = [rng.randint(spec.first_low, spec.first_high)]
        nums += [rng.randint(spec.step_low, spec.step_high) for _ in range(spec.n_operands - 1)]
        ops = [rng.choice("+-") for _ in range(spec.n_operands - 1)]
        totals, total = [], nums[0]
        for op, x in zip(ops, nums[1:]):
            total = total + x if op == "+" else total - x
            totals.append(total)
        if 0 <= min(totals) and max(totals) <= spec.max_total:
            break
    expr = str(nums[0]) + "".join(op + str(x) for op, x in zip(ops, nums[1:]))
    steps, prev = [], nums[0]
    for op, x, t in zip(ops, nums[1:], totals):
        steps.append(f"{prev}{op}{x}={t}")
        prev = t
    answer = str(totals[-1])
    # The check undoes the last step with the inverse operation: redundant once the step is right.
    before_last = totals[-2] if len(totals) > 1 else nums[0]
    inverse = f"{answer}{'+' if ops[-1] == '-' else '-'}{nums[-1]}={before_last}"
    concise = "\n".join(steps) + f"\n#### {answer}"
    verbose = "\n".join(steps) + f"\ncheck {inverse}\n#### {answer}"
    return {
        "prompt": f"Compute {expr}.\n",
        "answer": answer,
        "solution": verbose,
        "concise": concise,
        "n_operands": spec.n_operands,
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


def build_world_data(out_dir: str | Path, n_train: int = 2000, n_test: int = 200, n_ood: int = 200, seed: int = 0) -> dict[str, Path]:
    """Write ``train/test/ood.jsonl`` (disjoint prompts) and return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = make_split(n_test, seed + 1)
    train = make_split(n_train, seed, exclude={r["prompt"] for r in test})
    ood = make_split(n_ood, seed + 2, OUT_OF_DOMAIN)
    paths = {}
    for name, rows in (("train", train), ("test", test), ("ood", ood)):
        paths[name] = out_dir / f"{name}.jsonl"
        write_jsonl(paths[name], rows)
    return paths


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


class DataRowError(ValueError):
    """A data file row that cannot be used; the message names the file and line."""


def check_rows(path: str | Path) -> int:
    """Validate a JSONL task file line by line; return the row count.

    Raises :class:`DataRowError` naming the file, the 1-based line and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found: rebuild the tiny world with `kdrl-mini build-world`, or pass an existing JSONL file")
    n = 0
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataRowError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise DataRowError(f"{path}:{lineno}: expected a JSON object with 'prompt' and 'answer', got {type(row).__name__}")
            missing = [k for k in REQUIRED_FIELDS if not isinstance(row.get(k), str) or not row.get(k)]
            if missing:
                raise DataRowError(f"{path}:{lineno}: row lacks non-empty string field(s) {missing}; every row needs 'prompt' and 'answer'")
            n += 1
    if n == 0:
        raise DataRowError(f"{path}: no rows; a task file needs at least one JSON line with 'prompt' and 'answer'")
    return n


def load_split(data_dir: str | Path, split: str):
    """Load ``data_dir/<split>.jsonl`` as a ``datasets.Dataset`` after checking every row."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    import datasets

    path = Path(data_dir) / f"{split}.jsonl"
    check_rows(path)
    datasets.disable_progress_bars()
    return datasets.load_dataset("json", data_files=str(path), split="train")
