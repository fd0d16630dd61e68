"""Checkpoints of a run: trainable weights, optimiser, sampler and RNG states, written atomically.

Files are read with ``torch.load(weights_only=True)``: a checkpoint holds tensors, numbers,
strings and containers only, so a planted pickle cannot run code when a run is resumed.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path

import torch


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Copies of the parameters that train (LoRA adapters, or every weight without LoRA)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, trainable: dict, source) -> None:
    """Copy a checkpoint's trainable weights into a freshly loaded model of the same config."""
    named = dict(model.named_parameters())
    unknown = sorted(set(trainable) - set(named))
    if unknown:
        raise ValueError(f"checkpoint {source} does not match this student (unknown weights {unknown[:3]}...); "
                         f"load it with the same config it was written with")
    with torch.no_grad():
        for n, v in trainable.items():
            if named[n].shape != v.shape:
                raise ValueError(f"checkpoint {source}: weight {n} has shape {tuple(v.shape)} but this student's is "
                                 f"{tuple(named[n].shape)}; resume with the config the run was started with")
            named[n].copy_(v)


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


class RunWriteError(OSError):
    """A run file could not be written (full disk, read-only folder); the message names the file."""


def write_error(err: OSError, path) -> OSError:
    """One clear line for an OSError met while writing ``path``: what happened and the fix."""
    if isinstance(err, RunWriteError):
        return err
    if err.errno in FULL:
        why = "no space left on the device (or quota exceeded); free some space or choose another --output-dir"
    elif err.errno in READ_ONLY:
        why = "the folder is not writable (read-only or no permission); choose another --output-dir"
    else:
        why = f"{err.strerror or err}; check the disk and the folder"
    return RunWriteError(err.errno or 0, f"cannot write {path}: {why}")


@contextmanager
def writing(path):
    """Turn an OSError while writing ``path`` into one line naming it (see :func:`write_error`)."""
    try:
        yield
    except OSError as err:
        raise write_error(err, path) from None


def save(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a kill, a full disk or a read-only folder never
    leaves half a checkpoint, and non-finite trainable weights never replace the last good one."""
    bad = [n for n, v in state.get("trainable", {}).items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise FloatingPointError(f"refusing to write {path}: trainable weights {bad[:3]} hold non-finite values "
                                 f"(NaN/inf); the last good checkpoint is kept, lower lr or check the data")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with writing(path):
            torch.save(state, tmp)
            os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def load(path: Path) -> dict:
    """Read a checkpoint (tensors and plain data only) with a clear error for a missing or bad file."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; start without --resume, or point --output-dir at "
                                f"the folder of the interrupted run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  any failure of the weights-only unpickler: one line
        first = (str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)[:200]
        raise ValueError(f"checkpoint {path} cannot be read safely ({first}); it is damaged or was not written "
                         f"by kdrl_mini: delete it and start the run again") from None
