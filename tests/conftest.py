"""Suite-wide setup: torch on one thread (see pytest_configure); the char-LM's token files
(rnnkit.data.tokens) cached in a folder of the test session, never in the user's ~/.cache
(subprocesses of CLI tests inherit the variable); the ``one_thread`` fixture."""

import os

import pytest
import torch

THREADS = int(os.environ.get("RNNKIT_TEST_THREADS", "1"))


def pytest_configure(config):
    """torch on one intra-op thread in every test, and in the CLI processes tests start
    (``OMP_NUM_THREADS``), unless ``RNNKIT_TEST_THREADS`` says otherwise. The tests' models are
    tiny: a second thread gains nothing, and on a busy 2-core machine (scripts/test runs a worker
    per core) threads that wait for each other made single tests up to 10× slower (the seq2seq
    guide: 134 s on two threads, 12 s on one, same load). A test that is about threads sets
    them itself."""
    torch.set_num_threads(THREADS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    before = os.environ.get("RNNKIT_DATA_CACHE")
    os.environ["RNNKIT_DATA_CACHE"] = str(tmp_path_factory.mktemp("token-cache"))
    yield
    if before is None:
        os.environ.pop("RNNKIT_DATA_CACHE", None)
    else:
        os.environ["RNNKIT_DATA_CACHE"] = before


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, restored after: measured thresholds and run times hold
    on a shared 2-core machine, where two threads contend and a step can take many times longer.
    Modules ask for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
