"""``mergeflow run [SNAKEMAKE ARGS]``: the workflow, recovering by itself after a killed run.

A Snakemake killed by a timeout, pre-emption or ``kill -9`` leaves its lock in
``.snakemake/locks``, and the next Snakemake refuses to start until someone runs ``--unlock``.
This command holds a lock of its own, ``.snakemake/mergeflow-run.lock`` (``fcntl``; it is kept
across the ``exec`` into Snakemake and dropped by the kernel when that process dies, however it
dies). Holding it proves that no workflow started this way runs in the directory, so a Snakemake
lock found there is stale: it is removed, in one line, before Snakemake starts. Jobs the killed
run left half done are redone (``rerun-incomplete`` in profiles/default).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mergeflow.engine.outdir import owner_tag


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        prefix_chars="\0",  # every argument, options included, is passed on to Snakemake
        add_help=False,
        help="run the workflow with snakemake, removing the lock a killed run left behind",
        description="Run Snakemake with the given arguments after removing a stale lock.",
    )
    p.add_argument("snakemake_args", nargs="*", help="passed to snakemake (e.g. --cores all)")
    p.set_defaults(func=run_command)


def _workdir(args: list[str]) -> Path:
    for i, arg in enumerate(args):
        if arg in ("-d", "--directory") and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--directory="):
            return Path(arg.split("=", 1)[1])
    return Path.cwd()


def run_command(args) -> int:
    snakemake = shutil.which("snakemake")
    if snakemake is None:
        print("mergeflow run: error: snakemake is not on PATH (install mergeflow[workflow])", file=sys.stderr)
        return 1
    extra = list(args.snakemake_args)
    state = _workdir(extra) / ".snakemake"
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / "mergeflow-run.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        print(f"mergeflow run: error: the workflow is already running in {state.parent} ({owner})", file=sys.stderr)
        return 1
    os.ftruncate(fd, 0)
    os.write(fd, owner_tag().encode())
    locks = state / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        unlock = subprocess.run([snakemake, *extra, "--unlock"], capture_output=True, text=True)
        if unlock.returncode != 0:
            print(f"mergeflow run: error: could not remove the stale Snakemake lock in {state.parent}", file=sys.stderr)
            sys.stderr.write(unlock.stdout[-2000:] + unlock.stderr[-2000:])
            return 1
        print(f"mergeflow run: removed the lock a killed Snakemake left in {state.parent}", file=sys.stderr)
    os.set_inheritable(fd, True)  # Snakemake inherits the lock: it is held until Snakemake exits
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(snakemake, [snakemake, *extra])
    return 1  # not reached
