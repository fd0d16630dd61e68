"""A run's task splits from Hugging Face ``datasets`` (config field ``dataset``), as kit rows.

``dataset`` may name:

- a hub id, ``"owner/name"`` (``load_dataset(id, dataset_config)``; cached copies work offline);
- a local file, ``.json``/``.jsonl``/``.parquet``/``.arrow``/``.csv``: one file is one split,
  ``"train"`` (slice it: ``train_split: "train[:90%]"``, ``test_split: "train[90%:]"``);
- a pattern with ``"{split}"``, e.g. ``"mydata/{split}.parquet"``: one file (or one
  ``save_to_disk`` folder) per split;
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a plain folder
  of data files named by split (``train.parquet``, ``test.jsonl``, ...; e.g. a hub dataset fetched
  with ``huggingface-cli download --repo-type dataset ... --local-dir DIR``).

Splits are picked by the config's ``train_split``, ``test_split`` and optional ``ood_split``
(a name, optionally sliced ``name[a:b]`` with row counts or percentages) and returned under the kit's
names ``"train"``, ``"test"`` and ``"ood"``. The column map (``prompt_column``, ``answer_column``) turns
each row into a dict with string ``"prompt"`` and ``"answer"`` (numbers become strings); other columns
are kept. Every failure is one line naming the dataset, the split, the row (or a file's line) and the
fix. The tiny world's JSONL path (``dataset: null``) does not come through here.
"""

from __future__ import annotations

import glob
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .files import DataRowError, damage, reader_log_muted
from ..utils import DATA_SUFFIXES, hub_offline, is_hub_id

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
_SPEC = re.compile(r"(?P<name>[^\[\]]+?)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?")
PROMPT_GUESSES = ("prompt", "question", "problem", "query", "input", "instruction")
ANSWER_GUESSES = ("answer", "solution", "final_answer", "output", "target", "response")


class DataSourceError(ValueError):
    """A dataset that cannot be opened or lacks a split; the message names it and the fix."""


@dataclass
class LoadedSplit:
    """One split in kit form: ``label`` names it in messages ("dataset X, split test"), ``rows`` are
    dicts with string ``prompt`` and ``answer`` plus the dataset's other columns."""

    label: str
    rows: list[dict]


def wanted_splits(cfg) -> dict[str, tuple[str, str]]:
    """Kit split name -> (the dataset's split spec, the config field naming it); ood only if set."""
    wanted = {"train": (cfg.train_split, "train_split"), "test": (cfg.test_split, "test_split")}
    if cfg.ood_split:
        wanted["ood"] = (cfg.ood_split, "ood_split")
    return wanted


def load_splits(cfg) -> dict[str, LoadedSplit]:
    """The splits ``cfg.dataset`` names, column-mapped: {"train": ..., "test": ..., ["ood": ...]}."""
    import datasets

    datasets.disable_progress_bars()
    source = cfg.dataset
    specs = {kit: (parse_spec(spec, field), spec, field) for kit, (spec, field) in wanted_splits(cfg).items()}
    tables = None if "{split}" in source else open_source(source, cfg.dataset_config)  # opened once
    out = {}
    for kit_name, ((name, start, stop), spec, field) in specs.items():
        whole = _pattern_split(source, name, field) if tables is None else pick(tables, name, source, field)
        label = f"dataset {source}, split {spec}"
        out[kit_name] = LoadedSplit(label, to_rows(select(whole, start, stop, f"{label} (config field {field})"),
                                                   cfg.prompt_column, cfg.answer_column, label))
    return out


def parse_spec(spec: str, field: str) -> tuple[str, str | None, str | None]:
    """``"train[:90%]"`` -> ("train", None, "90%"); a plain name has no bounds."""
    m = _SPEC.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        raise DataSourceError(f"config field {field}={spec!r} is not a split; write a name such as train, or a "
                              f"slice such as train[:90%] or train[100:200]")
    return m["name"], m["start"], m["stop"]


def _bound(text: str | None, n: int) -> int | None:
    """A slice bound over ``n`` rows: "10" -> 10, "90%" -> round(0.9 n), None -> None."""
    if text is None:
        return None
    if text.endswith("%"):
        return int(math.copysign(round(abs(int(text[:-1])) * n / 100), int(text[:-1])))
    return int(text)


def select(table, start: str | None, stop: str | None, label: str = "this split"):
    """Rows ``start:stop`` of a ``datasets.Dataset`` (None, None: all); one line if the slice selects none."""
    if start is None and stop is None:
        return table
    n = len(table)
    if not (rows := range(n)[slice(_bound(start, n), _bound(stop, n))]):
        raise DataSourceError(f"{label}: the slice [{start or ''}:{stop or ''}] selects no row of its {n} (it starts "
                              f"past the end or stops before it starts); pick bounds within 0..{n} or 0%..100%")
    return table.select(rows)


def open_source(source: str, config: str | None):
    """Every split of a non-pattern ``source`` as a ``datasets.DatasetDict``."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _open_folder(path)
    if path.is_file():
        return _open_file(path)
    if is_hub_id(source):
        return open_hub(source, config)
    kind = "data file" if source.lower().endswith(DATA_SUFFIXES) else "file or folder"
    raise FileNotFoundError(f"dataset {source}: no such {kind}, and not a hub id (owner/name); pass an existing "
                            f".jsonl/.parquet file, a save_to_disk folder, a pattern like mydata/{{split}}.parquet, "
                            f"or a hub id such as openai/gsm8k")


def pick(tables, name: str, source: str, field: str):
    """Split ``name`` of a DatasetDict, or a one-line error listing the splits it has."""
    if name in tables:
        return tables[name]
    have = sorted(tables)
    hint = (" (one file is one split, 'train': slice it, e.g. train_split: train[:90%] and test_split: "
            "train[90%:], or use a pattern like mydata/{split}.parquet)") if have == ["train"] else ""
    raise DataSourceError(f"dataset {source} has no split {name!r} (config field {field}); its splits: {have}"
                          f"{hint}; set {field} to one of them" + ("" if field != "ood_split" else
                                                                    " or to null for no ood split"))


def _first_line(err: BaseException) -> str:
    while err.__cause__ is not None:  # the reader's own error, under datasets' "error while generating"
        err = err.__cause__
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _open_file(path: Path):
    """A local data file as a one-split DatasetDict ({"train": ...}, as ``datasets`` names it)."""
    import datasets

    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataSourceError(f"dataset {path}: unknown file type {path.suffix!r}; use one of "
                              f"{sorted(BUILDERS)} or a save_to_disk folder")
    try:
        with reader_log_muted():
            return datasets.load_dataset(builder, data_files={"train": str(path)})
    except Exception as err:  # noqa: BLE001  any reader failure is this file's fault; name it and the line
        why = damage(path) or f"cannot be read as {builder} ({_first_line(err)})"
        raise DataSourceError(f"dataset {path}: {why}; fix the file or save it again with datasets (to_json / "
                              f"to_parquet)") from None


def _open_folder(path: Path):
    """A ``save_to_disk`` folder (Dataset or DatasetDict), else a folder of data files named by split."""
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    by_stem = split_files(path)
    if by_stem:  # one split per file, named by the file: datasets' own inference keeps only train/test/validation
        builder, files = by_stem
        try:
            with reader_log_muted():
                return datasets.load_dataset(builder, data_files=files)
        except Exception as err:  # noqa: BLE001  name the file, the line and what to fix
            why = next((f"{f}: {d}" for f in files.values() if (d := damage(Path(f)))), None)
            raise DataSourceError(f"dataset {path}: {why or f'its {builder} files cannot be read ({_first_line(err)})'}"
                                  f"; fix them or save them again with datasets (to_json / to_parquet)") from None
    try:
        return datasets.load_dataset(str(path))
    except Exception as err:  # noqa: BLE001  a folder datasets cannot read: say what it should hold
        raise DataSourceError(f"dataset {path}: a folder that is neither a save_to_disk folder nor data files named "
                              f"by split ({_first_line(err)}); save it with Dataset.save_to_disk or name files "
                              f"train.parquet, test.parquet, ...") from None


def split_files(path: Path) -> tuple[str, dict[str, str]] | None:
    """(builder, {split: file}) for a folder whose top-level data files are all of one kind, one per split
    name (``train.jsonl``, ``test.jsonl``, ``ood.jsonl``); None for anything else (sharded files,
    mixed kinds, sub-folders only), which ``datasets`` infers itself."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in BUILDERS)
    builders = {BUILDERS[p.suffix.lower()] for p in files}
    stems = [p.stem for p in files]
    sharded = any(re.search(r"-\d+-of-\d+$", stem) for stem in stems)  # train-00000-of-00002.parquet
    if not files or sharded or len(builders) != 1 or len(set(stems)) != len(stems):
        return None
    return builders.pop(), {p.stem: str(p) for p in files}


def pattern_splits(pattern: str) -> list[str]:
    """The split names for which ``pattern`` ("dir/{split}.parquet") matches an existing path."""
    before, _, after = pattern.partition("{split}")
    found = glob.glob(glob.escape(before) + "*" + glob.escape(after))
    rx = re.compile(re.escape(before) + r"(.+?)" + re.escape(after))
    return sorted({m[1] for m in map(rx.fullmatch, found) if m})


def _pattern_split(pattern: str, name: str, field: str):
    """The Dataset at ``pattern`` with "{split}" replaced by ``name`` (a data file or a saved folder)."""
    import datasets

    path = Path(pattern.replace("{split}", name)).expanduser()
    if not path.exists():
        raise DataSourceError(f"dataset {pattern} has no split {name!r} (config field {field}): {path} does not "
                              f"exist; splits found: {pattern_splits(pattern)}; set {field} to one of them"
                              + (" or to null for no ood split" if field == "ood_split" else ""))
    tables = _open_folder(path) if path.is_dir() else _open_file(path)
    if isinstance(tables, datasets.DatasetDict):
        if len(tables) != 1:
            raise DataSourceError(f"dataset {path} holds several splits {sorted(tables)}; with a {{split}} pattern "
                                  f"each path must hold one split: point dataset at {path} instead")
        return next(iter(tables.values()))
    return tables


def offline_fix(source: str, config: str | None) -> str:
    """How to run without the hub: save the dataset elsewhere, or point at local files."""
    args = repr(source) + (f", {config!r}" if config else "")
    unset = (", or unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE if this machine can reach the hub"
             if hub_offline() else "")
    return (f"on a machine with network run datasets.load_dataset({args}).save_to_disk('DIR'), copy DIR here and "
            f"set dataset: DIR (or pass a local .jsonl/.parquet file or a 'dir/{{split}}.parquet' pattern){unset}")


def open_hub(source: str, config: str | None):
    """Every split of hub dataset ``source`` (config ``config``); a cached copy works offline."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    offline = hub_offline()
    try:
        return datasets.load_dataset(source, config)
    except DatasetNotFoundError as err:
        if offline:
            raise ConnectionError(f"dataset {source} is not in the local cache and the hub is off "
                                  f"(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); {offline_fix(source, config)}") from None
        raise FileNotFoundError(f"dataset {source} was not found on the hub ({_first_line(err)}); check the id, or "
                                f"log in for a gated/private dataset (hf auth login)") from None
    except (ConnectionError, TimeoutError, OSError) as err:
        why = "HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set" if offline else _first_line(err)
        raise ConnectionError(f"dataset {source} cannot be fetched and is not in the local cache ({why}); "
                              f"{offline_fix(source, config)}") from None
    except ValueError as err:  # e.g. a missing or unknown config name
        raise DataSourceError(f"dataset {source} (config {config!r}) cannot be loaded: {_first_line(err)}; set "
                              f"dataset_config to one of its configs") from None


def as_text(value) -> str | None:
    """A cell as text: strings as they are, numbers as strings (18.0 -> "18"); else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _guess(columns: list[str], guesses: tuple[str, ...], other: str | None) -> str:
    """A likely column for a role, for the fix in an error message."""
    for name in guesses:
        if name in columns and name != other:
            return name
    rest = [c for c in columns if c != other]
    return rest[0] if rest else "NAME"


def check_columns(columns: list[str], prompt_column: str, answer_column: str, label: str) -> None:
    """Refuse a column map naming columns the table does not have (with the likely fix)."""
    for field, col, guesses, other in (("prompt_column", prompt_column, PROMPT_GUESSES, answer_column),
                                       ("answer_column", answer_column, ANSWER_GUESSES, prompt_column)):
        if col not in columns:
            raise DataRowError(f"{label}: no column {col!r} (columns: {columns}); set {field}: "
                               f"{_guess(columns, guesses, other)}")


def to_rows(table, prompt_column: str, answer_column: str, label: str) -> list[dict]:
    """Kit rows from a ``datasets.Dataset``: every column kept, plus string ``prompt`` and ``answer``
    taken from the mapped columns. A missing, empty or non-text cell is refused with its row index."""
    check_columns(list(table.column_names), prompt_column, answer_column, label)
    rows = table.to_list()
    if not rows:
        raise DataRowError(f"{label}: no rows; pick a split (or slice) that holds at least one row")
    out = []
    for i, row in enumerate(rows):
        mapped = {}
        for key, col in (("prompt", prompt_column), ("answer", answer_column)):
            text = as_text(row[col])
            if not text:
                what = ("empty" if text == "" else "missing (None)" if row[col] is None
                        else f"a {type(row[col]).__name__}, not text or a number")
                raise DataRowError(f"{label}, row {i}: column {col!r} ({key}) is {what}; fix or drop the row "
                                   f"(e.g. table.filter(...)), or map {key}_column to another column")
            mapped[key] = text
        out.append({**row, **mapped})
    return out
