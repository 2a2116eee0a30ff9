"""Content digests of models: what downstream jobs depend on, instead of a directory's mtime.

Snakemake reruns a job when an input is newer than its outputs, unless that input is a small file
whose checksum equals the one recorded when the job last ran. A model is a large directory, so
each model gets a ``model.sha256`` beside it, in ``sha256sum`` format, one line per file a merge
reads. ``provenance.json`` is left out because it records the config, not the weights. A rerun that
produces bit-identical weights therefore rewrites an identical digest, and nothing downstream reruns.

Local input directories get the same digest. A change in their files' sizes or mtimes decides when to
recompute it (see ``file_stats``), and the content decides whether anything downstream reruns.
"""

from __future__ import annotations

from pathlib import Path

from mergeflow.pipeline.hub import entry_for, fetch, files_to_fetch
from mergeflow.pipeline.recipes import PipelineError

PROVENANCE = "provenance.json"


def model_files(directory: str | Path) -> list[str]:
    """Every non-hidden file under ``directory``, relative and sorted (hidden: .git, .cache, ...)."""
    root = Path(directory)
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append(relative.as_posix())
    return sorted(found)


def file_stats(directory: str | Path) -> dict[str, list[int]]:
    """Size and mtime of each file: a signature cheap enough to take at every parse, so that any
    edit, copy or touch of a local model reruns its digest job (which then decides by content)."""
    root = Path(directory)
    return {name: [(stat := (root / name).stat()).st_size, stat.st_mtime_ns] for name in model_files(root)}


def _lines(hashes: dict[str, str]) -> str:
    return "".join(f"{sha}  {name}\n" for name, sha in sorted(hashes.items()))


def digest(source: str, lockfile: str | None = None) -> str:
    """The digest text of a local model dir, or of a locked Hub ``repo@commit`` (fetched first)."""
    from mergeflow.engine.references import file_sha256

    if Path(source).is_dir():
        names = [n for n in files_to_fetch(model_files(source)) if n != PROVENANCE]
        if not names:
            raise PipelineError(f"{source}: no model files (*.safetensors/*.bin, *.json) to fingerprint")
        return _lines({name: file_sha256(Path(source) / name) for name in names})
    entry = entry_for(lockfile, source)
    fetch(entry)
    return _lines({name: meta["sha256"] for name, meta in entry["files"].items()})
