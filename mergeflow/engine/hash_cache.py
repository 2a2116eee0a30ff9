"""Files' sha256 remembered across runs, under what changes whenever a file's bytes do.

A gradual merge hashes the same inputs at every step (for each merge's provenance and for the
workflow's digests): 14-140 GB a model, at about 1.8 GB/s a core. An entry keeps a file's sha256
with its path, device, inode, size, mtime and ctime. The kernel sets ctime on every write, and no
call lets a user set it, so a file whose fields all still match holds the bytes that were hashed.
A file changed less than ``SETTLED_NS`` before it was hashed could change again under the same
timestamps (on a file system with a coarse clock), so its hash is not stored; nor is a hash taken
while the file changed. Entries are written whole (renamed into place) and an unreadable one is
ignored, so the cache cannot hand out a torn hash; a cache that cannot be written costs only the
hashing.

``MERGEFLOW_HASH_CACHE`` names the cache directory, or turns it ``off``. The default is
``$XDG_CACHE_HOME/mergeflow/sha256`` (``~/.cache/mergeflow/sha256``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

CACHE_VARIABLE = "MERGEFLOW_HASH_CACHE"
SETTLED_NS = 2 * 10**9


def cache_directory() -> Path | None:
    """Where entries live; None when the cache is off or no home directory is known."""
    setting = os.environ.get(CACHE_VARIABLE, "")
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting)
    try:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no HOME and no password entry
        return None
    return root / "mergeflow" / "sha256"


def remembered_sha256(path: Path, compute: Callable[[], str]) -> str:
    """``compute()``, the sha256 of ``path``, unless an entry for the same bytes holds it; an empty
    result (hashing stopped early) is never stored."""
    directory = cache_directory()
    if directory is None:
        return compute()
    real = os.path.realpath(path)
    before = os.stat(real)
    entry_file = directory / (hashlib.sha256(f"{real}\0{before.st_dev}\0{before.st_ino}".encode()).hexdigest() + ".json")
    signature = _signature(real, before)
    cached = _read(entry_file)
    if cached is not None and cached.get("file") == signature and isinstance(cached.get("sha256"), str):
        return cached["sha256"]
    started = time.time_ns()
    digest = compute()
    settled = max(before.st_mtime_ns, before.st_ctime_ns) <= started - SETTLED_NS
    if digest and settled and _signature(real, os.stat(real)) == signature:
        _write(entry_file, {"file": signature, "sha256": digest})
    return digest


def _signature(real: str, stat: os.stat_result) -> list:
    return [real, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _read(entry_file: Path) -> dict | None:
    try:
        entry = json.loads(entry_file.read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def _write(entry_file: Path, entry: dict) -> None:
    """Whole or not at all: a temporary file beside it, renamed over it."""
    try:
        entry_file.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=entry_file.parent, prefix=".", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(entry, stream)
        os.replace(temporary, entry_file)
    except BaseException as err:
        Path(temporary).unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise
