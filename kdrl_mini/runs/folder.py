"""One run per folder: a finished or interrupted run is never replaced by accident, and two
trainers never write to the same folder at once.

``claim(folder, resume, overwrite)`` is held for the whole run:
- the folder must not be a file; it is created if missing;
- a folder that already holds a run (``metrics.jsonl``, ``checkpoint.pt`` or TRL's
  ``checkpoint-<step>/``, see :func:`latest_checkpoint`) is refused unless
  the run is resumed (``--resume``) or explicitly replaced (``--overwrite``, which deletes that
  run's files first, so a new run never continues an old checkpoint);
- a lock file (``.lock``, holding the owner's pid) keeps a second trainer out; a lock left by a
  process that no longer exists is taken over.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import yaml

from ..utils import code_version
from .checkpoints import writing

RUN_FILES = ("metrics.jsonl", "checkpoint.pt", "config.yaml", "trainable.pt", "final.json")
TRL_CHECKPOINT = "checkpoint-"  # TRL's (HF Trainer's) checkpoint folders: checkpoint-<step>


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint a run in ``folder`` resumes from: the kit's ``checkpoint.pt``, or TRL's
    ``checkpoint-<step>/`` with the largest step; None when there is none."""
    folder = Path(folder)
    if (folder / "checkpoint.pt").is_file():
        return folder / "checkpoint.pt"
    found = [p for p in folder.glob(TRL_CHECKPOINT + "*") if p.is_dir() and p.name[len(TRL_CHECKPOINT):].isdigit()]
    return max(found, key=checkpoint_step, default=None)


def checkpoint_step(path: Path | None) -> int:
    """The step of TRL's ``checkpoint-<step>`` folder (0 for none)."""
    return 0 if path is None else int(path.name[len(TRL_CHECKPOINT):])


def remove_checkpoints(folder: str | Path) -> None:
    """Delete every checkpoint of the run in ``folder`` (a finished study keeps metrics, not weights)."""
    while (found := latest_checkpoint(folder)) is not None:
        shutil.rmtree(found) if found.is_dir() else found.unlink()


class RunFolderError(ValueError):
    """The folder cannot be used for this run; the message says why and what to do."""


def read_mapping(path: Path, fix: str) -> dict:
    """A run file holding one mapping (``config.yaml``, ``final.json``, a study's baseline); a damaged file is
    refused in one line naming it and ``fix`` (it is never rewritten here)."""
    try:
        data = (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text())
        why = None if isinstance(data, dict) else "not `name: value` pairs"
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        reason = getattr(err, "problem", None) or getattr(err, "msg", None) or type(err).__name__
        why = f"not readable {path.suffix[1:].upper()}: {reason}"
    if why:
        raise RunFolderError(f"{path} is damaged ({why}); {fix}")
    return data


def config_changes(run: str | Path, cfg, ignore) -> list[str]:
    """The fields (beyond ``ignore``) whose value in the run's ``config.yaml`` differs from ``cfg``'s;
    [] without the file; a damaged file is one line naming it."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        return []
    saved = read_mapping(path, "the run's settings are unknown: restore it (e.g. git checkout) or delete the run "
                               "folder to train it again")
    return sorted(k for k, v in cfg.to_dict().items() if k in saved and k not in ignore and saved[k] != v)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def take_pid_file(path: Path) -> int:
    """Create ``path`` holding this process's pid, atomically: the pid is written to a private file first
    and hard-linked into place, so no other process ever reads the file half written. Returns 0 once this
    process holds it (also when it already did), else the pid of the live process that does; a file left
    by a process that is gone is taken over. -1 if it could not be taken."""
    mine = path.with_name(f"{path.name}.{os.getpid()}")
    mine.write_text(str(os.getpid()))
    try:
        for _ in range(2):
            try:
                os.link(mine, path)
                return 0
            except FileExistsError:
                try:
                    owner = int(path.read_text().strip() or 0)
                except (OSError, ValueError):
                    owner = 0
                if owner and owner != os.getpid() and _alive(owner):
                    return owner
                path.unlink(missing_ok=True)  # ours, unreadable, or left by a process that is gone
        return -1
    finally:
        mine.unlink(missing_ok=True)


def _lock(folder: Path) -> Path:
    lock = folder / ".lock"
    owner = take_pid_file(lock)
    if owner > 0:
        raise RunFolderError(f"{folder} is in use by another trainer (pid {owner}); wait for it to finish "
                             f"or choose another --output-dir")
    if owner < 0:
        raise RunFolderError(f"{folder}: could not take the run lock {lock}; remove it if no trainer is running")
    return lock


def check(folder: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """The checks :func:`claim` makes before it takes the lock; cheap, so the CLI runs them
    before any model loads. Nothing is created or changed."""
    folder = Path(folder)
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in the folder and --overwrite deletes it: pass only one")
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--output-dir {folder} is a file; pass a folder path")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunFolderError(f"--output-dir {folder}: {parent} is a file; pass a folder path")
            break
    held = (folder / "metrics.jsonl").exists() or latest_checkpoint(folder) is not None
    if held and not resume and not overwrite:
        raise RunFolderError(f"{folder} already holds a run; continue it with --resume, replace it with "
                             f"--overwrite, or choose another --output-dir")
    if resume and latest_checkpoint(folder) is None:
        raise FileNotFoundError(f"no checkpoint at {folder / 'checkpoint.pt'} (or {folder}/checkpoint-<step> of a "
                                f"TRL run); start without --resume, or point --output-dir at the interrupted run")
    return folder


@contextmanager
def claim(folder: str | Path, resume: bool = False, overwrite: bool = False):
    folder = check(folder, resume, overwrite)
    with writing(folder / ".lock"):
        folder.mkdir(parents=True, exist_ok=True)
        lock = _lock(folder)
    try:
        held = (folder / "metrics.jsonl").exists() or latest_checkpoint(folder) is not None
        if held and not resume and not overwrite:
            raise RunFolderError(f"{folder} already holds a run; continue it with --resume, replace it with "
                                 f"--overwrite, or choose another --output-dir")
        if overwrite and not resume:
            for name in RUN_FILES:
                (folder / name).unlink(missing_ok=True)
            shutil.rmtree(folder / "adapter", ignore_errors=True)
            remove_checkpoints(folder)
        yield folder
    finally:
        lock.unlink(missing_ok=True)


def write_config(folder: str | Path, cfg, engine: str | None = None) -> None:
    """The run's ``config.yaml``: every field of ``cfg``, under a header naming the commit its code came
    from (``# code: <sha>``) and, for another engine than the kit's trainer, ``# engine: <name>``."""
    path = Path(folder) / "config.yaml"
    header = f"# code: {code_version()}\n" + (f"# engine: {engine}\n" if engine else "")
    with writing(path):
        path.write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))

