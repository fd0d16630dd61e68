"""Task files: one JSONL file per split (``<data_dir>/<split>.jsonl``), each row a dict with a
``prompt`` and an ``answer``; written, read, checked line by line and loaded through ``datasets``;
and where a data file ``datasets`` cannot read is broken (:func:`damage`)."""

from __future__ import annotations

import csv
import json
import logging
from contextlib import contextmanager
from pathlib import Path

SPLITS = ("train", "test", "ood")  # every world has these (the real pair too)
EVAL_SPLITS = ("test", "blind", "ood", "ood_control")  # the trainer evaluates whichever exist
EXTRA_SPLITS = ("mix",)  # evaluated only when a config names them (TrainConfig.eval_splits)
KNOWN_SPLITS = ("train",) + EVAL_SPLITS + EXTRA_SPLITS
REQUIRED_FIELDS = ("prompt", "answer")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class DataRowError(ValueError):
    """A data file row that cannot be used; the message names the file and line."""


def check_file(path: str | Path) -> int:
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
    if split not in KNOWN_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {KNOWN_SPLITS}")
    import datasets

    path = Path(data_dir) / f"{split}.jsonl"
    check_file(path)
    datasets.disable_progress_bars()
    return datasets.load_dataset("json", data_files=str(path), split="train")


def damage(path: Path) -> str | None:
    """Where a JSON, JSONL or CSV data file is broken, for a one-line error: ``"is empty"``, ``"line 6: not
    valid JSON (...)"`` or ``"line 9: 3 fields where the header has 2"``; None when this finds nothing."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        return "is empty (no rows)"
    lines = text.splitlines()
    if path.suffix.lower() == ".csv":
        reader = csv.reader(lines)
        width = len(next(reader))
        for row in reader:
            if row and len(row) != width:
                return f"line {reader.line_num}: {len(row)} fields where the header has {width}"
        return None
    if path.suffix.lower() not in (".json", ".jsonl"):
        return None
    try:
        json.loads(text)
        return None  # one JSON document that parses: the trouble is not its syntax
    except json.JSONDecodeError as whole:
        first = next(i for i, line in enumerate(lines) if line.strip())
        try:
            json.loads(lines[first])  # the first line alone is a value: JSON lines, one row per line
        except json.JSONDecodeError:
            return f"line {whole.lineno}: not valid JSON ({whole.msg})"
    for i, line in enumerate(lines[first:], start=first + 1):
        try:
            if line.strip():
                json.loads(line)
        except json.JSONDecodeError as err:
            return f"line {i}: not valid JSON ({err.msg}); each line must be one JSON object"
    return None


@contextmanager
def reader_log_muted():
    """``datasets`` logs a reader's failure on a line of its own before it raises; the kit's one-line error
    (with :func:`damage`'s line number) says it instead, so that line is muted while a file is read."""
    log = logging.getLogger("datasets")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)
