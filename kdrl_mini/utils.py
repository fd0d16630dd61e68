"""Small conveniences shared by the CLI, notebooks and tests: seeding and quiet logs."""

from __future__ import annotations

import logging
import os
import random
import warnings


def offline() -> None:
    """Never reach for a model hub: everything the kit needs is local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def seed_everything(seed: int = 0, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; optionally ask torch for deterministic kernels (CPU-safe)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def quiet() -> None:
    """Hide library chatter that is not a real problem (progress bars of weight loading,
    bitsandbytes' per-call dtype notices, a deprecation inside peft); real errors still show."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def setup(seed: int = 0, threads: int | None = 1) -> None:
    """One call at the top of a notebook: offline, quiet, seeded, and one torch thread by default
    (the kit's models are tiny: a second thread costs more in synchronisation than it gains,
    and on a busy 2-core laptop it can make generation 10-100x slower)."""
    import torch

    offline()
    quiet()
    seed_everything(seed)
    if threads:
        torch.set_num_threads(threads)
