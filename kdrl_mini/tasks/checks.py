"""Checks of task rows against the models that will read them, each naming the file and line.

:func:`kdrl_mini.tasks.files.check_file` checks the shape of every row (JSON object, non-empty
``prompt`` and ``answer``). What it cannot see without the tokenizer and the model is checked
here, before any weights load:

- bytes that are not UTF-8 (the file and line, the byte and its column);
- a prompt or answer that is only whitespace (the reward could never be earned);
- characters the tokenizer maps to its unknown token (the model would see ``<unk>``);
- prompts that, with the generation budget, do not fit into the model's context.

Every failure raises :class:`kdrl_mini.tasks.files.DataRowError` (a ``ValueError``) with one line.
"""

from __future__ import annotations

from pathlib import Path

from .files import DataRowError


def check_utf8(path: str | Path) -> None:
    """Refuse a file whose bytes are not UTF-8, naming the line, the column and the byte."""
    path = Path(path)
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            byte = raw[err.start:err.start + 1].hex()
            raise DataRowError(f"{path}:{lineno}: byte 0x{byte} at column {err.start + 1} is not UTF-8; save the "
                               f"file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _line_numbers(path: Path) -> list[int]:
    """1-based line numbers of the non-blank lines (row i of the split is line numbers[i])."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return []
    return [i for i, line in enumerate(lines, start=1) if line.strip()]


def check_rows(rows, source: str | Path, tokenizer, max_positions: int | None, budget: int = 0,
               indexed: bool = False) -> None:
    """Refuse rows the models cannot use; ``source`` is the file they came from.

    rows: dicts with ``prompt`` and ``answer`` (already shape-checked).
    Line numbers are read from ``source`` (blank lines skipped, as the loader does); without the
    file, row i is reported as line i + 1.
    indexed: ``source`` is a label (e.g. "dataset openai/gsm8k, split test") and row i is reported
    as "<source>, row i" (0-based, as ``datasets`` indexes it), not as a file line.
    tokenizer: the student's tokenizer (the teacher's maps text to the same ids).
    max_positions: the smaller context length of the two models (None: not checked).
    budget: tokens generated after the prompt (the eval budget is the larger one).
    """
    numbers = [] if indexed else _line_numbers(Path(source))
    source = source if indexed else Path(source)

    def where(i: int) -> str:
        if indexed:
            return f"{source}, row {i}"
        return f"{source}:{numbers[i] if i < len(numbers) else i + 1}"

    unk = getattr(tokenizer, "unk_token_id", None)
    room = None if max_positions is None else max_positions - budget
    # A token is at most this many characters long, so a longer prompt cannot fit: refused
    # without tokenising it (a 1 MB prompt would otherwise take minutes and gigabytes).
    longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
    for i, row in enumerate(rows):
        for field in ("prompt", "answer"):
            text = row[field]
            if isinstance(text, str) and not text.strip():
                raise DataRowError(f"{where(i)}: {field} {text!r} is only whitespace; a reward can never be earned "
                                   f"on it: fix or remove the row")
        if room is not None and len(row["prompt"]) > room * max(longest, 1):
            raise DataRowError(f"{where(i)}: prompt of {len(row['prompt']):,} characters cannot fit the model's "
                               f"context of {max_positions} tokens ({budget} kept for the response); shorten it")
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
    answers = tokenizer([r["answer"] for r in rows], add_special_tokens=False)["input_ids"]
    for i, (p, a) in enumerate(zip(prompts, answers)):
        if unk is not None and (unk in p or unk in a):
            text = rows[i]["prompt"] + rows[i]["answer"]
            chars = sorted({c for c in text if unk in tokenizer(c, add_special_tokens=False)["input_ids"]})
            field = "prompt" if unk in p else "answer"
            raise DataRowError(f"{where(i)}: {field} has character(s) {', '.join(map(repr, chars[:5]))} that the "
                               f"tokenizer does not know (they would become {tokenizer.unk_token}); remove them or "
                               f"use a tokenizer that covers them")
        if room is not None and len(p) > room:
            raise DataRowError(f"{where(i)}: prompt of {len(p)} tokens does not fit the model's context of "
                               f"{max_positions} tokens with {budget} kept for the response; shorten it")
