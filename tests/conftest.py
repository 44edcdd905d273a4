"""Suite-wide setup: the char-LM's token files (rnnkit.data.tokens) are cached in a folder of the
test session, never in the user's ~/.cache (subprocesses of CLI tests inherit the variable)."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    before = os.environ.get("RNNKIT_DATA_CACHE")
    os.environ["RNNKIT_DATA_CACHE"] = str(tmp_path_factory.mktemp("token-cache"))
    yield
    if before is None:
        os.environ.pop("RNNKIT_DATA_CACHE", None)
    else:
        os.environ["RNNKIT_DATA_CACHE"] = before
