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


def save_final(model, out: Path) -> None:
    """A finished run's trainable weights: ``out/adapter`` (peft's folder) or ``out/trainable.pt``."""
    if hasattr(model, "peft_config"):
        with writing(out / "adapter"):
            model.save_pretrained(str(out / "adapter"))
    else:
        with writing(out / "trainable.pt"):
            torch.save(trainable_state(model), out / "trainable.pt")


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


# Fields a resumed run may change (how long, where, how it is logged), and nothing else.
RESUMABLE_CHANGES = ("max_steps", "output_dir", "threads", "eval_every", "eval_size", "final_eval_size",
                     "eval_batch_size", "checkpoint_every", "device")


def run_state(trainer) -> dict:
    """Everything a run needs to continue: trainable weights, optimiser, prompt sampler, RNG states,
    step and config. On CPU a resumed run continues bit for bit (tested); on CUDA it continues from
    the same state but not bit for bit: sampling and several kernels are nondeterministic there
    (deterministic algorithms are requested on CPU only, see ``utils.setup``)."""
    import random

    return {"step": trainer.step, "trainable": trainable_state(trainer.world.student),
            "optimizer": trainer.opt.state_dict(), "sampler": trainer.sampler.state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(), "config": trainer.cfg.to_dict(),
            "scaler": trainer.scaler.state_dict() if getattr(trainer, "scaler", None) is not None else None}


def restore_run(trainer, path: Path) -> int:
    """Put a checkpoint's state into a freshly built trainer of the same config; returns its step.
    A checkpoint written with other settings (beyond RESUMABLE_CHANGES) is refused."""
    import random

    state = load(path)
    changed = [k for k, v in state.get("config", {}).items()
               if k not in RESUMABLE_CHANGES and getattr(trainer.cfg, k, None) != v]
    if changed:
        raise ValueError(f"--resume: {path} was written with other settings for {changed}; resume with the "
                         f"run's own config ({path.parent / 'config.yaml'}) or start a new --output-dir")
    load_trainable(trainer.world.student, state["trainable"], path)
    trainer.opt.load_state_dict(state["optimizer"])
    trainer.sampler.load(state["sampler"])
    if state.get("scaler") is not None and getattr(trainer, "scaler", None) is not None:
        trainer.scaler.load_state_dict(state["scaler"])  # fp16 loss scale (CUDA only)
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    return state["step"]
