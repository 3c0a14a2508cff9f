import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini.npz"
MINI = Path(os.environ.get("OPSWAP_CIFAR10_MINI", MINI))


@pytest.fixture(scope="session")
def cifar10_mini() -> Path:
    """Path of the real CIFAR-10 subset beside the project; skips when it is absent."""
    if not MINI.is_file():
        pytest.skip(f"cifar10-mini.npz not found at {MINI}")
    return MINI


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose much when cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
