"""What every learning test shares: one intra-op thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: the measured values and the run time hold on a shared 2-core machine, where
    two threads contend and a step can take many times longer; the setting is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
