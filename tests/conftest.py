"""Settings every test shares."""

from __future__ import annotations

import os

import pytest

from mergeflow.engine.hash_cache import CACHE_VARIABLE


@pytest.fixture(autouse=True, scope="session")
def _own_hash_cache(tmp_path_factory):
    """Merges and digests remember file hashes; the tests keep theirs out of the user's cache
    (the variable reaches the workflow's jobs too)."""
    previous = os.environ.get(CACHE_VARIABLE)
    os.environ[CACHE_VARIABLE] = str(tmp_path_factory.mktemp("hash-cache"))
    yield
    if previous is None:
        os.environ.pop(CACHE_VARIABLE, None)
    else:
        os.environ[CACHE_VARIABLE] = previous
