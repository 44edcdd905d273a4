"""What every learning test shares: one intra-op thread (tests/conftest.py's ``one_thread``)."""

import pytest


@pytest.fixture(autouse=True)
def _learning_on_one_thread(one_thread):
    """Every learning test runs on one thread: its thresholds were measured so."""
