"""The healed student's numbers, measured once and committed, so that a machine without the
15-minute heal build (a fresh clone, CI) still shows them, labelled as recorded, not as measured.

:func:`measure` computes them from the cached healed student (notebook 07b, section B3);
:func:`write` stores them in ``docs/real_pair_heal.json``; :func:`measured_or_recorded` measures
when the cache holds the healed student and reads the record otherwise.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

from ..models import load_teacher
from ..rollout import greedy_eval
from ..utils import REPO_ROOT
from .cache import read_marker
from .heal import kl_to_teacher
from .pair import HEAL

RECORD = REPO_ROOT / "docs" / "real_pair_heal.json"


def measure(healed_dir: str | Path, teacher, tokenizer, rows: list[dict]) -> dict:
    """The heal's recipe and losses (from its marker), the healed student's greedy accuracy and first
    answers on ``rows`` (64 new tokens, chat template) and its exact KL to ``teacher`` (nats/token)
    on its own greedy answers (48 tokens)."""
    marker = read_marker(healed_dir)
    healed = load_teacher(healed_dir, "none")
    r = greedy_eval(healed, tokenizer, rows, max_new_tokens=64, chat_template=True)
    return {"recipe_is_current": marker["heal_spec"] == dataclasses.asdict(HEAL), "examples": marker["examples"],
            "teacher_correct": marker["teacher_correct"], "loss_first": marker["loss_first"],
            "loss_last": marker["loss_last"], "steps": len(marker["losses"]),
            "fit_minutes": marker["fit_seconds"] / 60, "greedy_accuracy": r["accuracy"], "n": r["n"],
            "answers": r["samples"][:2],
            "kl_to_teacher": kl_to_teacher(healed, teacher, tokenizer, [x["prompt"] for x in rows], 48)}


def write(numbers: dict, path: Path = RECORD) -> None:
    path.write_text(json.dumps({**numbers, "recorded_on": datetime.date.today().isoformat()}, indent=1) + "\n")


def measured_or_recorded(healed_dir: str | Path, teacher, tokenizer, rows: list[dict]) -> tuple[dict, str]:
    """(numbers, where they come from): measured now when ``healed_dir`` holds a finished heal
    (and ``teacher`` is loaded), else the committed record."""
    if teacher is not None and read_marker(healed_dir) is not None:
        return measure(healed_dir, teacher, tokenizer, rows), f"measured now on {Path(healed_dir).name}"
    record = json.loads(RECORD.read_text())
    return record, (f"no healed student in the cache (a 15-minute build, `real.pair.materialize_healed`): the numbers "
                    f"recorded on {record['recorded_on']} by `real.heal_record.write`")


def describe(numbers: dict, kl_pruned: float) -> str:
    """The lines notebook 07b prints."""
    return "\n".join([
        f"  built with the current recipe real.HEAL: {numbers['recipe_is_current']}",
        f"  {numbers['examples']} teacher answers ({numbers['teacher_correct']} right); SFT loss "
        f"{numbers['loss_first']:.2f} -> {numbers['loss_last']:.2f} over {numbers['steps']} steps; "
        f"fine-tuning took {numbers['fit_minutes']:.1f} min",
        f"healed student: greedy accuracy {numbers['greedy_accuracy']:.2f} on {numbers['n']} test problems; "
        f"first answers:",
        *[f"    {text[:160]!r}" for text in numbers["answers"]],
        f"KL(healed student || teacher) on its own greedy answers: {numbers['kl_to_teacher']:.2f} nats/token "
        f"(pruned: {kl_pruned:.2f})"])
