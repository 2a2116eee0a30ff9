"""What every fault must keep: an exit code, one line naming the culprit, no traceback, nothing
left behind. (Helpers live here, not in conftest.py: test directories share that module name.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mergeflow.cli import main


def linear(*paths) -> str:
    body = "".join(f"  - model: {p}\n    parameters: {{weight: 0.5}}\n" for p in paths)
    return f"merge_method: linear\nmodels:\n{body}"


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its content: 'nothing changed' is equality."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            state[rel] = f"-> {path.readlink()}"
        elif path.is_file():
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[rel] = "dir"
    return state


class Merge:
    """Runs ``mergeflow merge`` in-process in a work dir and checks what a fault must keep."""

    def __init__(self, root: Path, capsys):
        self.root = root
        self.capsys = capsys
        self.out = root / "out"
        self.config = root / "merge.yml"

    def run(self, text: str | bytes | None, *flags: str, out: Path | None = None) -> tuple[int, str]:
        if text is not None:
            self.config.write_bytes(text if isinstance(text, bytes) else text.encode())
        self.capsys.readouterr()
        code = main(["merge", str(self.config), str(out or self.out), "--quiet", *flags])
        captured = self.capsys.readouterr()
        self.stdout = captured.out
        return code, captured.err

    def fails(self, text, *names: str, flags: tuple[str, ...] = (), out: Path | None = None, code: int = 1) -> str:
        """The merge fails with ``code`` and one error line naming ``names``; nothing under the
        work dir changed (no OUT, no staging, no lock, an existing OUT untouched)."""
        before = tree(self.root)
        if text is not None:
            before.pop(self.config.name, None)
        got, err = self.run(text, *flags, out=out)
        after = tree(self.root)
        if text is not None:
            after.pop(self.config.name, None)
        assert got == code, err
        assert "Traceback" not in err
        errors = [line for line in err.splitlines() if line.startswith("mergeflow merge: error")]
        assert len(errors) == 1, err
        for name in names:
            assert str(name) in errors[0], errors[0]
        assert after == before
        return errors[0]
