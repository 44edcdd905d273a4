"""Shared fixtures of the engine tests."""

import pytest

from rnnkit.engine import fused


@pytest.fixture(scope="module")
def fused_extension():
    """Build (or load the cached) extension once per module; fail loudly if it cannot be built."""
    ext = fused.load_extension()
    if ext is None:
        pytest.fail(f"the fused engine could not be built: {fused.build_error()}")
    return ext
