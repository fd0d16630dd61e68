"""Small conveniences shared by the CLI, notebooks and tests: seeding and quiet logs."""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import re
import subprocess
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout holding kdrl_mini/ (caches go under it)
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".arrow", ".csv")  # local data files `datasets` reads
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # "owner/name"
_TRUE = ("1", "true", "yes", "on")


def offline() -> None:
    """Never reach for a model hub: everything the kit needs is local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def hub_offline() -> bool:
    """Is the Hugging Face hub switched off right now (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE set true)?"""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def is_hub_id(name) -> bool:
    """Does ``name`` name a hub repository ("owner/name") rather than a local path?

    Not a hub id: anything that exists on disk, a data file name (``DATA_SUFFIXES``), a
    ``"{split}"`` pattern, absolute or relative-looking paths and deeper paths ("a/b/c")."""
    if not isinstance(name, str) or "{split}" in name or ".." in name:
        return False
    if name.lower().endswith(DATA_SUFFIXES) or Path(name).expanduser().exists():
        return False
    return _HUB_ID.fullmatch(name) is not None


def hub_names(cfg) -> list[str]:
    """The hub ids a config names (dataset, student, teacher); empty for the kit's own local world."""
    names = (getattr(cfg, "dataset", None), getattr(cfg, "student_path", None), getattr(cfg, "teacher_path", None))
    return [n for n in names if is_hub_id(n)]


def vllm_installed() -> bool:
    """Whether vLLM can be imported here: the TRL engine then generates with vLLM colocated on a card (with the
    student's dense weights, :mod:`kdrl_mini.integrations.trl.vllm_sync`), and the estimate prices that path;
    otherwise both engines generate with HF ``generate``."""
    return importlib.util.find_spec("vllm") is not None


def seed_everything(seed: int = 0, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; optionally ask torch for deterministic kernels (CPU-safe)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


# Libraries whose notices are about their own next release (deprecations, renamed arguments) or their
# optional hub kernels, never about the kit's results. `quiet` hides those notices and their loggers'
# chatter below ERROR; a UserWarning, an error or an exception still shows (and fails a checked cell).
LIBRARIES = ("transformers", "peft", "trl", "accelerate", "datasets", "huggingface_hub", "bitsandbytes",
             "kernels", "tokenizers")
_LIBRARY_MODULES = r"(%s)(\..*)?$" % "|".join(LIBRARIES)


def quiet() -> None:
    """Hide library chatter that is not a real problem, in one place for the CLI, notebooks and tests:
    deprecation and future-release notices raised inside the libraries above (e.g. transformers 5.25's
    ``is_gradient_checkpointing`` notice that peft triggers), their INFO/WARNING log lines (weight-loading
    progress bars, bitsandbytes' per-call dtype notices and its offline "Failed to load ... from
    kernels-community" line) and tqdm's "IProgress not found". Real errors still show."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=_LIBRARY_MODULES)
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets


def set_threads(threads: int | None, device=None) -> None:
    """Limit torch's CPU threads (the one place the kit does). Ignored for CUDA runs, whose CPU
    work is light. The kit's models are tiny: a second thread costs more in synchronisation
    than it gains, and on a busy 2-core laptop it can make generation 10-100x slower."""
    import torch

    if threads and (device is None or torch.device(device).type == "cpu"):
        torch.set_num_threads(threads)


def setup(seed: int = 0, threads: int | None = 1, offline_hub: bool = True) -> None:
    """One call at each entry point (CLI, first notebook cell, test conftest): quiet, seeded,
    one torch thread on CPU, offline by default (the shipped world is local; ``offline_hub=False``
    for a run that names hub ids, where the user's own HF_HUB_OFFLINE still wins). Deterministic
    kernels are requested on CPU only (on CUDA they fill new memory with NaN and slow kernels)."""
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if offline_hub:
        offline()
    quiet()
    seed_everything(seed, deterministic=not torch.cuda.is_available())
    set_threads(threads, "cuda" if torch.cuda.is_available() else "cpu")


def code_version() -> str:
    """The commit of the checkout holding ``kdrl_mini`` ("+ local changes" when its package files differ
    from that commit), or "unknown" outside a git checkout; each run's ``config.yaml`` starts with it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--", "kdrl_mini").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return "unknown" if head.returncode else head.stdout.strip() + (" + local changes" if dirty else "")
