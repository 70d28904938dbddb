import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TXL_SHARED_DATA", ROOT.parent / "shared" / "data"))
BUNDLED_DATA = ROOT / "data"


@pytest.fixture
def shared_data() -> Path:
    """The larger real corpora (../shared/data); tests that need them skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set TXL_SHARED_DATA to its path)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _few_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
