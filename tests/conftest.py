"""Shared fixtures: small and generic, for any test that needs a node home or an open store."""

from pathlib import Path

import pytest

from node.crypto import random_key


@pytest.fixture
def home(tmp_path) -> Path:
    """A node home directory path that does not exist yet (as `mydata init` expects)."""
    return tmp_path / "home"


@pytest.fixture
def store_key() -> bytes:
    return random_key()


@pytest.fixture
def store(tmp_path, store_key):
    """An open encrypted store in a fresh database file, closed after the test."""
    from node.store import Store

    s = Store.open(tmp_path / "node.db", store_key)
    yield s
    s.close()
