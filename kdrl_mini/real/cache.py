"""Folders built once and reused: a model folder is written under a temporary name, its marker
(what it was built from) written last, then moved into place in one ``os.replace``. A folder
without a marker is an interrupted build and is never used; one whose marker matches the inputs
is reused without loading anything. The real pair's teacher and student (:mod:`.pair`) and the
healed student (:mod:`.heal`) are cached this way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

MARKER = "kdrl_source.json"  # written last: a folder without it is an interrupted build
TOKENIZER_FILES = ("special_tokens_map.json", "chat_template.jinja")


def read_marker(folder: str | Path) -> dict | None:
    """The marker of a finished folder, or None (missing, unreadable, or no weights)."""
    folder = Path(folder)
    marker = folder / MARKER
    if not marker.is_file() or not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        return None
    try:
        return json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None


def is_built(folder: str | Path, expect: dict) -> bool:
    """True when ``folder`` is a finished build whose marker matches ``expect``."""
    found = read_marker(folder)
    return found is not None and all(found.get(k) == v for k, v in expect.items())


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    """The tokenizer files of ``src`` into ``dst``, byte for byte."""
    for f in Path(src).iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in TOKENIZER_FILES):
            shutil.copy2(f, Path(dst) / f.name)


def save_built(out: str | Path, model, marker: dict, tokenizer=None, tokenizer_from: str | Path | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``, or the tokenizer files of ``tokenizer_from``) to ``out``
    with ``marker``: under a temporary name first, marker last, then moved into place, so a
    half-written folder is never visible under ``out``. Returns ``out``."""
    out = Path(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    if tokenizer_from is not None:
        copy_tokenizer(tokenizer_from, tmp)
    (tmp / MARKER).write_text(json.dumps(marker, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
