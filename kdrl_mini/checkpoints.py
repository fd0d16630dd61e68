"""Checkpoints of a run: trainable weights, optimiser, sampler and RNG states, written atomically.

Files are read with ``torch.load(weights_only=True)``: a checkpoint holds tensors, numbers,
strings and containers only, so a planted pickle cannot run code when a run is resumed.
"""

from __future__ import annotations

import os
import pickle
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


def save(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a kill never leaves half a checkpoint."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict:
    """Read a checkpoint (tensors and plain data only) with a clear error for a missing or bad file."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; start without --resume, or point --output-dir at "
                                f"the folder of the interrupted run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path} cannot be read safely ({first}); it is damaged or was not written "
                         f"by kdrl_mini: delete it and start the run again") from None
