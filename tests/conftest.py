import os
from pathlib import Path

import pytest
import torch

from kdrl_mini.utils import setup  # noqa: E402

# The kit's one entry-point setup: quiet, seeded, one CPU thread, offline unless a GPU machine asks
# for the preset test's downloads with KDRL_TEST_HUB=1 (the hub libraries read the flag at import).
setup(seed=0, threads=1, offline_hub=os.environ.get("KDRL_TEST_HUB") != "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def tokenizer():
    from kdrl_mini.models import load_tokenizer

    return load_tokenizer(DATA / "models" / "student")


@pytest.fixture
def one_thread():
    """torch on one thread for the test, restored after it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
