"""Turn a config's model references into local directories, and record what exactly was used.

A path that exists locally is used as is (as mergekit does); anything else is a Hub repo fetched
through huggingface_hub's cache, which honours HF_HOME, HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE.
"""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

from mergeflow.engine.config import ModelRef
from mergeflow.engine.errors import PreflightError
from mergeflow.engine.hash_cache import remembered_sha256

# What a merge reads: weights, configs and tokenizer files. Pickles only if no safetensors exist.
HUB_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "*.txt", "*.jinja"]
_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")


def fetch_patterns(repo_files: list[str]) -> list[str]:
    """What to download from a repo holding ``repo_files``: pickles only when no safetensors exist."""
    if any(name.endswith(".safetensors") for name in repo_files):
        return list(HUB_PATTERNS)
    return [*HUB_PATTERNS, "*.bin"]


def resolve_model(ref: ModelRef, cache_dir: str | None = None, kind: str = "model") -> Path:
    """The local directory of ``ref`` (a model, or with ``kind='adapter'`` a LoRA adapter);
    a ``model+lora`` reference resolves to its base model here, its adapter through ``ref.lora``."""
    local = Path(ref.path).expanduser()
    if local.exists():
        if ref.revision:
            raise PreflightError(f"{kind} {ref.base}: a local path cannot take a revision")
        if not local.is_dir():
            raise PreflightError(f"{kind} {ref.base}: not a directory")
        return local.resolve()
    if ref.path.startswith(("/", "./", "../", "~")) or ref.path.count("/") > 1:
        raise PreflightError(f"{kind} {ref.base}: local path does not exist")
    return _download(ref.base, cache_dir, kind)


def _download(ref: ModelRef, cache_dir: str | None, kind: str) -> Path:
    from huggingface_hub import list_repo_files, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        try:
            patterns = fetch_patterns(list_repo_files(ref.path, revision=ref.revision))
        except (HfHubHTTPError, OSError, LocalEntryNotFoundError):
            patterns = list(HUB_PATTERNS)  # offline: the safetensors files a warm cache holds
        return Path(snapshot_download(ref.path, revision=ref.revision, allow_patterns=patterns, cache_dir=cache_dir))
    except Exception as err:  # huggingface_hub raises many types; the user needs one line
        raise PreflightError(f"{kind} {ref}: not a local directory and not fetchable from the Hub ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


def identity(ref: ModelRef, path: Path) -> str:
    """``repo@commit`` for Hub snapshots (the snapshot folder is the commit), else the absolute path.
    For a ``model+lora`` reference this is the base's; ``run`` appends the adapter's."""
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return f"{ref.path}@{parts[-1]}"
    return str(path)


def file_sha256(path: Path, stop: threading.Event | None = None) -> str:
    """A Hub LFS blob is named by its sha256, so a cached snapshot file needs no re-hashing; other
    files are hashed once and remembered until they change (``hash_cache``).

    ``stop``, when set, ends the hashing early (an interrupted merge does not wait for it).
    """
    if path.is_symlink():
        blob = path.resolve()
        if blob.parent.name == "blobs" and _SHA256_NAME.match(blob.name):
            return blob.name
    return remembered_sha256(path, lambda: content_sha256(path, stop))


def content_sha256(path: Path, stop: threading.Event | None = None) -> str:
    """The sha256 of the bytes themselves: what checks a download (a cache's file names prove nothing)."""
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)  # reused: a fresh buffer for each read made hashing 40% slower
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            if stop is not None and stop.is_set():
                return ""
            digest.update(memoryview(buffer)[:count])
    return digest.hexdigest()
