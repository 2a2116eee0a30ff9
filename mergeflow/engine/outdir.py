"""The output directory: what a merge may replace, who may write it, and atomic publication.

A merge writes into a staging directory beside OUT and renames it over OUT only when complete,
so OUT is always either the previous output or the new one. While it writes, the merge holds an
exclusive lock on ``.NAME.lock`` beside OUT (a POSIX ``fcntl`` lock: the kernel, or the NFS
server, releases it when the process dies, even by ``kill -9`` or a node crash). A merge that
gets the lock therefore knows that every staging (``.NAME.tmp-PID@HOST-*``) or retired
(``.NAME.old-PID@HOST-*``) sibling belongs to a dead run and removes it; one that finds the lock
held refuses to start and names the running merge. Nothing here imports torch.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mergeflow.engine.errors import OutputError

log = logging.getLogger("mergeflow")

PROVENANCE_FILE = "provenance.json"
MERGEKIT_CONFIG = "mergekit_config.yml"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def owner_tag() -> str:
    """``PID@HOST`` of this process, the mark on its staging and retired directories."""
    return f"{os.getpid()}@{socket.gethostname()}"


def make_dir(parent: Path, prefix: str) -> Path:
    """A new uniquely named directory, created with the user's umask (tempfile.mkdtemp's is
    0700, which would make merged models unreadable to the user's group on a shared cluster)."""
    while True:
        path = parent / f"{prefix}{owner_tag()}-{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o777)
            return path
        except FileExistsError:
            continue


def is_merge_output(path: Path) -> bool:
    """A directory a previous merge wrote: mergeflow's provenance, or mergekit's config + weights."""
    if (path / PROVENANCE_FILE).is_file():
        return True
    return (path / MERGEKIT_CONFIG).is_file() and any(
        p.suffix in WEIGHT_SUFFIXES for p in path.iterdir() if p.is_file()
    )


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse an OUT that a merge would destroy by mistake: a file, or someone's own directory."""
    if out.is_symlink() and not out.exists():
        raise OutputError(f"{out}: is a dangling symbolic link; remove it or choose another output directory")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory; choose another output directory")
    if out.is_dir() and not overwrite:
        try:
            empty = next(out.iterdir(), None) is None
        except OSError as err:
            raise OutputError(f"{out}: cannot list the existing directory ({err.strerror})") from None
        if not empty and not is_merge_output(out):
            raise OutputError(
                f"{out}: is a non-empty directory that is not a previous merge output (no "
                f"{PROVENANCE_FILE}, no {MERGEKIT_CONFIG} with weights); pass --overwrite to replace it"
            )


def check_not_an_input(out: Path, inputs: dict[str, Path]) -> None:
    """Refuse an OUT that is, contains or lies inside an input model (symlinks followed)."""
    target = out.resolve()
    for label, path in inputs.items():
        model = path.resolve()
        if target == model:
            raise OutputError(f"{out}: is the input model {label}; choose another output directory")
        if model in target.parents:
            raise OutputError(f"{out}: lies inside the input model {label} ({model}); choose another output directory")
        if target in model.parents:
            raise OutputError(f"{out}: contains the input model {label} ({model}); choose another output directory")


def check_free_space(out: Path, needed: int) -> None:
    """Fail before writing when the output's file system cannot hold ``needed`` bytes."""
    parent = _existing_ancestor(out.parent)
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return  # some file systems cannot say; the write itself will fail cleanly if it fills up
    if free < needed:
        raise OutputError(
            f"{out}: not enough free space on {parent}: the merged weights need {_size(needed)}, "
            f"{_size(free)} is free"
        )


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.1f} {unit}" if unit != "B" else f"{count} B"
        count /= 1000
    return f"{count:.1f} TB"


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``out`` for the block; the lock file is removed afterwards."""
    lock_path = out.parent / f".{out.name}.lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise OutputError(f"{out.parent}: cannot write there ({err.strerror})") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise OutputError(f"{out}: another merge into it is running ({owner}); wait for it or choose another output directory") from None
            raise OutputError(f"{lock_path}: cannot lock ({err.strerror})") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its previous holder unlinked while we waited to open it
            break
        os.close(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, owner_tag().encode())
        except OSError:
            pass  # the owner's name is for messages only; a full disk must not stop the lock
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def remove_leftovers(out: Path) -> list[Path]:
    """With the lock held: restore an OUT a dead run had retired but not replaced, then remove
    every staging and retired directory dead runs left beside ``out``; returns those removed."""
    # Exactly the names make_dir gives, so another OUT's (``OUT.tmp-x``'s) are never matched.
    mine = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-\d+@[^/]+-[0-9a-f]{{8}}")
    leftovers = sorted(p for p in out.parent.iterdir() if mine.fullmatch(p.name) and p.is_dir() and not p.is_symlink())
    for retired in leftovers:
        previous = retired / out.name
        if mine.fullmatch(retired.name).group(1) == "old" and not out.exists() and not out.is_symlink() and previous.exists():
            os.replace(previous, out)
            log.warning("restored %s, which an interrupted merge had moved aside", out)
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
        log.warning("removed %s, left by an interrupted merge", path.name)
    return leftovers


def created_parents(out: Path) -> list[Path]:
    """Create ``out``'s missing parents (user's umask); returns them, deepest first, so that a
    failed merge can remove what it created."""
    missing = []
    parent = out.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{out.parent}: cannot create the output's parent directory ({err.strerror})") from None
    return missing


def remove_if_empty(directories: list[Path]) -> None:
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


@contextmanager
def _signals_held(out: Path) -> Iterator[None]:
    """SIGINT/SIGTERM are noted, not acted on, during the block (Python runs signal handlers in
    the main thread, whichever thread the signal hit, so a handler swap is what holds them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for signum in dict.fromkeys(arrived):
        log.warning("%s arrived while the finished merge was being published; %s is complete", signal.Signals(signum).name, out)


@contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a staging directory beside ``out``; it replaces ``out`` only if the block succeeds.

    The two renames that swap it in run with SIGINT/SIGTERM held back, so a signal cannot leave
    ``out`` moved aside (one that arrives then finds the merge complete, and is only reported); a
    failure or signal anywhere else removes the staging directory.
    """
    try:
        staging = make_dir(out.parent, f".{out.name}.tmp-")
    except OSError as err:
        raise OutputError(f"{out.parent}: cannot write there ({err.strerror})") from None
    try:
        yield staging
        with _signals_held(out):
            if out.exists() or out.is_symlink():
                retired = make_dir(out.parent, f".{out.name}.old-")
                os.replace(out, retired / out.name)
                os.replace(staging, out)
                shutil.rmtree(retired, ignore_errors=True)  # what is left, the next merge removes
            else:
                os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def guarded_output(out: Path, needed_bytes: int) -> Iterator[Path]:
    """The whole protocol for writing a model directory ``out`` (merge and MoE builds alike):
    parents made with the user's umask (and removed again if the build fails), the output lock
    held, dead runs' leftovers cleaned, free space checked, and a staging directory yielded that
    replaces ``out`` atomically when the block succeeds."""
    created = created_parents(out)
    try:
        with output_lock(out):
            remove_leftovers(out)
            check_free_space(out, needed_bytes)
            with atomic_directory(out) as staging:
                yield staging
    except BaseException:
        remove_if_empty(created)
        raise
