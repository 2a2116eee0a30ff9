"""The model lock and downloads: each Hub ``repo@revision`` pinned to a commit and per-file sha256s.

The first run resolves a revision once (network) and records it; later runs read only the lock, so
a moved branch changes nothing until ``mergeflow lock --refresh``, and a warm cache works offline.
Only what a merge reads is fetched (the engine's patterns), into the standard HF cache.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mergeflow.pipeline.recipes import InputModel, PipelineError, yaml_error
from mergeflow.quality.files import write_atomic

LOCK_VERSION = 1
LOCK_HEADER = (
    "# mergeflow model lock: the commit and per-file sha256 of every Hub model the recipes use.\n"
    "# Written by the first run; refresh with `mergeflow lock --refresh`. Commit it.\n"
)


def files_to_fetch(names: list[str]) -> list[str]:
    """The files a merge reads: the engine's patterns, plus pickles only when no safetensors exist."""
    from huggingface_hub.utils import filter_repo_objects

    from mergeflow.engine.references import fetch_patterns

    return sorted(filter_repo_objects(names, allow_patterns=fetch_patterns(names)))


def read_lock(path: str | Path) -> dict[str, dict]:
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise yaml_error(str(path), err) from None
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION or not isinstance(data.get("models"), dict):
        raise PipelineError(f"{path}: not a version-{LOCK_VERSION} mergeflow lock; delete it and rerun to recreate it")
    return data["models"]


def write_lock(path: str | Path, entries: dict[str, dict]) -> None:
    """Atomic, so an interrupted run never leaves half a lock behind."""
    body = yaml.safe_dump({"version": LOCK_VERSION, "models": dict(sorted(entries.items()))}, sort_keys=False)
    write_atomic(path, LOCK_HEADER + body)


def hub_error(what: str, err: Exception) -> PipelineError:
    """One line for any huggingface_hub failure (it raises many types); never echoes the token."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return PipelineError(
        f"{what}: {type(err).__name__}: {first} (check the name, HF_TOKEN for private repos, and network access)"
    )


def resolve(model: InputModel) -> dict:
    """Pin ``repo@revision``: its commit and the sha256 of each file a merge needs."""
    from huggingface_hub import HfApi, hf_hub_download

    from mergeflow.engine.references import file_sha256

    try:
        info = HfApi().model_info(model.repo, revision=model.revision, files_metadata=True)
        siblings = {s.rfilename: s for s in info.siblings or []}
        files = {}
        for name in files_to_fetch(list(siblings)):
            sibling = siblings[name]
            if sibling.lfs is not None:
                sha256 = sibling.lfs.sha256
            else:  # small regular files: the Hub only gives a git sha1, so hash the bytes
                sha256 = file_sha256(Path(hf_hub_download(model.repo, name, revision=info.sha)))
            files[name] = {"size": sibling.size, "sha256": sha256}
    except Exception as err:  # huggingface_hub raises many types; the user needs one line
        raise hub_error(f"cannot lock {model.lock_key}", err) from None
    if not files:
        raise PipelineError(f"cannot lock {model.lock_key}: the repo has no model files (*.safetensors/*.bin, *.json)")
    return {"repo": model.repo, "revision": model.revision, "commit": info.sha, "files": files}


def ensure_locked(lockfile: str | Path, models: list[InputModel], refresh: bool = False) -> dict[str, dict]:
    """Lock entries for ``models``; resolves (and writes) only what is missing, or all with ``refresh``."""
    entries = read_lock(lockfile)
    wanted = [m for m in models if m.is_hub]
    todo = [m for m in wanted if refresh or m.lock_key not in entries]
    if todo:
        for model in todo:
            entries[model.lock_key] = resolve(model)
        write_lock(lockfile, entries)
    return {m.lock_key: entries[m.lock_key] for m in wanted}


def entry_for(lockfile: str | Path | None, source: str) -> dict:
    """The lock entry of a pinned ``repo@commit`` (a source that is not a local directory)."""
    if lockfile is None:
        raise PipelineError(f"{source}: not a local directory (a Hub reference needs --lock)")
    repo, _, commit = source.partition("@")
    for entry in read_lock(lockfile).values():
        if entry["repo"] == repo and entry["commit"] == commit:
            return entry
    raise PipelineError(f"{lockfile}: no entry for {source}; rerun the workflow to re-read the lock")


def fetch(entry: dict) -> Path:
    """The snapshot dir of a locked model, downloaded if the cache lacks any file, then verified."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from mergeflow.engine.references import content_sha256

    repo, commit, files = entry["repo"], entry["commit"], sorted(entry["files"])
    try:
        snapshot = Path(snapshot_download(repo, revision=commit, allow_patterns=files, local_files_only=True))
        complete = all((snapshot / name).is_file() for name in files)
    except LocalEntryNotFoundError:
        complete = False
    if not complete:
        try:
            snapshot = Path(snapshot_download(repo, revision=commit, allow_patterns=files))
        except Exception as err:
            raise hub_error(f"cannot download {repo}@{commit}", err) from None
    for name in files:  # by content: a corrupted blob keeps its sha256 name in the cache
        actual = content_sha256(snapshot / name)
        if actual != entry["files"][name]["sha256"]:
            raise PipelineError(
                f"{repo}@{commit}: {name} has sha256 {actual}, the lock says {entry['files'][name]['sha256']}"
            )
    return snapshot
