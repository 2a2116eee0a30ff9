"""Helpers for the verify/reproduce tests, in a module of their own: every test directory's
``conftest.py`` is the same module ``conftest`` when several directories run in one session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def model_files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def mergeflow(*args: str, env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mergeflow.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
