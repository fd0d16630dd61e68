"""GSM8K-style word problems for real instruct models (the SmolLM2 pair): one step in domain,
two steps out of domain, each ending in ``#### <answer>``. Written for the kit, offline, from a seed."""

from __future__ import annotations

import random
from pathlib import Path

from ..tasks.files import write_jsonl
from ..world.task import distinct_rows

NAMES = ("Tom", "Anna", "Ben", "Maria", "Leo", "Sara", "Omar", "Mia", "Ivan", "Lucy", "Ravi", "Emma")
ITEMS = ("apples", "pencils", "marbles", "stickers", "cookies", "books", "stamps", "shells", "cards", "eggs")
INSTRUCTION = ("Solve the problem. Show your calculation, then write the final answer on the last line "
               "in the form #### <number>.")

# In domain: one operation each, as (template, answer from (a, b), operator shown in the solution).
ONE_STEP = (
    ("{n} has {a} {x} and buys {b} more. How many {x} does {n} have now?", lambda a, b: a + b, "+"),
    ("{n} has {a} {x} and gives {b} of them to a friend. How many {x} does {n} have left?", lambda a, b: a - b, "-"),
    ("{n} collects {a} {x} on Monday and {b} {x} on Tuesday. How many {x} does {n} collect in total?",
     lambda a, b: a + b, "+"),
    ("A box holds {a} {x}. {n} takes {b} {x} out of the box. How many {x} are still in the box?",
     lambda a, b: a - b, "-"),
    ("{n} has {a} bags with {b} {x} in each bag. How many {x} does {n} have?", lambda a, b: a * b, "*"),
)
# Two steps each (buy then give, or bags then give away): never seen in training, the OOD split.
TWO_STEP = (
    "{n} has {a} {x}, buys {b} more and then gives {c} to a friend. How many {x} does {n} have now?",
    "{n} has {a} bags with {b} {x} in each bag and gives away {c} {x}. How many {x} does {n} have left?",
)


def make_word_problem(rng: random.Random, two_step: bool = False) -> dict:
    """Draw one GSM8K-style word problem; returns a data row (``prompt``, ``answer``, ``solution``).

    In domain: one operation on small numbers (a in 2..20 with b in 1..9, or a product of two
    factors in 2..5): SmolLM2-135M-Instruct answers about a fifth of them right greedily (one
    in twenty with operands up to 60), so the teacher is useful. ``two_step``: such an addition or product followed by a subtraction.
    Answers are non-negative integers; the prompt ends with :data:`INSTRUCTION` so a correct
    completion's last line is ``#### <answer>``.
    """
    n, x = rng.choice(NAMES), rng.choice(ITEMS)
    if not two_step:
        text, fn, op = rng.choice(ONE_STEP)
        if op == "*":
            a, b = rng.randint(2, 5), rng.randint(2, 5)
        else:
            a, b = rng.randint(2, 20), rng.randint(1, 9)
            if op == "-":
                a, b = max(a, b + 1), min(a, b)
        answer = fn(a, b)
        solution = f"{a} {op} {b} = {answer}\n#### {answer}"
        problem = text.format(n=n, x=x, a=a, b=b)
    else:
        k = rng.randrange(len(TWO_STEP))
        if k == 0:
            a, b = rng.randint(2, 20), rng.randint(1, 9)
            first, op = a + b, "+"
        else:
            a, b = rng.randint(2, 5), rng.randint(2, 5)
            first, op = a * b, "*"
        c = rng.randint(1, first - 1)
        answer = first - c
        solution = f"{a} {op} {b} = {first}\n{first} - {c} = {answer}\n#### {answer}"
        problem = TWO_STEP[k].format(n=n, x=x, a=a, b=b, c=c)
    return {"prompt": f"{problem}\n{INSTRUCTION}", "answer": str(answer), "solution": solution,
            "steps": 2 if two_step else 1}


def _distinct(n: int, rng: random.Random, two_step: bool, exclude: set[str]) -> list[dict]:
    rows = distinct_rows(n, lambda: make_word_problem(rng, two_step), exclude)
    exclude.update(r["prompt"] for r in rows)
    return rows


def build_word_problems(out_dir: str | Path, n_train: int = 500, n_test: int = 100,
                        n_ood: int = 100, seed: int = 0) -> Path:
    """Write ``<out_dir>/{train,test,ood}.jsonl`` (disjoint prompts); return the folder.

    Deterministic in ``seed``: the same seed rewrites the same files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    test = _distinct(n_test, random.Random(seed + 1), False, seen)
    train = _distinct(n_train, random.Random(seed), False, seen)
    ood = _distinct(n_ood, random.Random(seed + 2), True, seen)
    for name, rows in (("train", train), ("test", test), ("ood", ood)):
        write_jsonl(out / f"{name}.jsonl", rows)
    return out
