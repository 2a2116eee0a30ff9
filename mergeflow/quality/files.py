"""Files in and out of the mergeflow commands (quality and pipeline); every write is atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    """numpy scalars (lm-eval's stderrs), sets and dtypes in results become plain JSON."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_optional_json(path: str | Path | None) -> Any:
    """A JSON file a manifest names, or None while it does not exist (that node has not run)."""
    return read_json(path) if path and Path(path).is_file() else None


def write_atomic(path: str | Path, content: str | bytes) -> None:
    """Write via a temp file in the same directory and rename it, so that a crash or a
    concurrent reader never sees half a file (Snakemake treats an existing output as done)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=_jsonable) + "\n")
