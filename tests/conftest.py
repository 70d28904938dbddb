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
def _one_thread():
    """One torch thread per test: the models in tests are tiny, so a second thread only adds waiting
    (and on a 2-core machine busy with other work, threads spinning for each other made tests 5-100x
    slower). A test that wants more sets it itself; the previous count is restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
