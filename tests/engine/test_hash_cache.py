"""File hashes are remembered only while the file's bytes cannot have changed."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from mergeflow.engine import hash_cache
from mergeflow.engine.references import file_sha256


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv(hash_cache.CACHE_VARIABLE, str(directory))
    return directory


@pytest.fixture
def settled_at_once(monkeypatch):
    """Files count as settled as soon as they are written (the tests do not wait two seconds)."""
    monkeypatch.setattr(hash_cache, "SETTLED_NS", 0)


class Counted:
    def __init__(self, path):
        self.path, self.calls = path, 0

    def __call__(self) -> str:
        self.calls += 1
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def test_a_settled_file_is_hashed_once(tmp_path, cache, settled_at_once):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights" * 1000)
    compute = Counted(weights)
    first = hash_cache.remembered_sha256(weights, compute)
    assert hash_cache.remembered_sha256(weights, compute) == first == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert compute.calls == 1
    assert not list(cache.glob(".*"))  # no temporary file left beside the entry


def test_a_rewrite_that_keeps_size_and_mtime_is_hashed_again(tmp_path, cache, settled_at_once):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 4096)
    compute = Counted(weights)
    hash_cache.remembered_sha256(weights, compute)
    before = weights.stat()
    time.sleep(0.05)  # past the kernel's coarse clock tick
    weights.write_bytes(b"b" * 4096)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `touch -r` or a copy tool does
    assert weights.stat().st_size == before.st_size and weights.stat().st_mtime_ns == before.st_mtime_ns
    assert hash_cache.remembered_sha256(weights, compute) == hashlib.sha256(b"b" * 4096).hexdigest()
    assert compute.calls == 2


def test_a_file_written_just_before_it_is_hashed_is_not_remembered(tmp_path, cache):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"fresh")
    compute = Counted(weights)
    hash_cache.remembered_sha256(weights, compute)
    hash_cache.remembered_sha256(weights, compute)
    assert compute.calls == 2
    assert not cache.exists() or not list(cache.iterdir())


def test_a_damaged_entry_is_ignored_and_replaced(tmp_path, cache, settled_at_once):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    compute = Counted(weights)
    expected = hash_cache.remembered_sha256(weights, compute)
    (entry,) = cache.iterdir()
    for damage in ("{", "[1, 2]", '{"file": [], "sha256": "0"}', '{"sha256": 5}'):
        entry.write_text(damage)
        assert hash_cache.remembered_sha256(weights, compute) == expected
    assert compute.calls == 5
    assert hash_cache.remembered_sha256(weights, compute) == expected and compute.calls == 5


def test_an_unwritable_cache_only_costs_the_hashing(tmp_path, monkeypatch, settled_at_once):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv(hash_cache.CACHE_VARIABLE, str(blocker / "cache"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    assert file_sha256(weights) == hashlib.sha256(b"weights").hexdigest()


def test_off_hashes_every_time_and_writes_nothing(tmp_path, monkeypatch, settled_at_once):
    monkeypatch.setenv(hash_cache.CACHE_VARIABLE, "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    compute = Counted(weights)
    hash_cache.remembered_sha256(weights, compute)
    hash_cache.remembered_sha256(weights, compute)
    assert compute.calls == 2 and not (tmp_path / "xdg").exists()


def test_the_default_cache_is_under_xdg_cache_home(tmp_path, monkeypatch, settled_at_once):
    monkeypatch.delenv(hash_cache.CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    file_sha256(weights)
    assert len(list((tmp_path / "xdg" / "mergeflow" / "sha256").glob("*.json"))) == 1


def test_a_stopped_hashing_is_not_remembered(tmp_path, cache, settled_at_once):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    assert hash_cache.remembered_sha256(weights, lambda: "") == ""
    assert not cache.exists() or not list(cache.iterdir())


def test_the_same_bytes_through_a_symlink_share_one_entry(tmp_path, cache, settled_at_once):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    (tmp_path / "link.safetensors").symlink_to(weights)
    compute = Counted(weights)
    hash_cache.remembered_sha256(weights, compute)
    hash_cache.remembered_sha256(tmp_path / "link.safetensors", compute)
    assert compute.calls == 1


def test_a_file_that_changes_while_it_is_hashed_is_not_remembered(tmp_path, cache, settled_at_once):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")

    def hash_while_appended() -> str:
        with weights.open("ab") as stream:
            stream.write(b" and more")
        return "0" * 64

    hash_cache.remembered_sha256(weights, hash_while_appended)
    assert not cache.exists() or not list(cache.iterdir())
