"""Subcommands the Snakemake workflow runs (and ``mergeflow lock``, which people run).

Each prints one line and exits non-zero on bad input, and writes its output atomically, so a
failed job leaves nothing that Snakemake could mistake for a result.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import yaml

from mergeflow.engine.errors import one_line_errors
from mergeflow.engine.outdir import make_dir
from mergeflow.pipeline.recipes import PipelineError, Plan, node_path, yaml_error
from mergeflow.quality.files import read_json, write_atomic, write_json_atomic


WORKFLOW_ONLY = "Run by the workflow; by hand only to redo one step."


def register(subparsers) -> None:
    """Add this area's subcommands; each sets ``func`` to a callable taking the parsed args."""
    p = subparsers.add_parser(
        "lock",
        help="pin every Hub model the recipes use (commit + per-file sha256) in the lockfile",
        description="Resolve the Hub models named by the config's recipes and aliases, and write their "
        "commits and file hashes to the lockfile (the config's lockfile:, default config/models.lock). "
        "Without --refresh only missing entries are resolved.",
    )
    p.add_argument("--config", default="config/config.yaml", help="workflow config (default %(default)s)")
    p.add_argument("--refresh", action="store_true", help="re-resolve every entry (branches may have moved)")
    p.set_defaults(func=lock_command)

    # digest and locate take the same model reference: a local dir, or REPO@COMMIT from the lock.
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("source", help="a local model directory, or REPO@COMMIT from the lockfile")
    source.add_argument("--lock", help="the lockfile, for Hub sources")

    p = subparsers.add_parser(
        "digest",
        parents=[source],
        help="write a model's content digest, fetching a locked Hub model first (workflow)",
        description="Write the sha256sum-style digest of the files a merge reads. SOURCE is a local "
        "model dir, or REPO@COMMIT from the lock, which is downloaded into the HF cache and verified. "
        f"{WORKFLOW_ONLY}",
    )
    p.add_argument("--output", required=True, type=Path, help="where the digest goes")
    p.set_defaults(func=digest_command)

    p = subparsers.add_parser(
        "locate",
        parents=[source],
        help="print the local directory of a model, a locked Hub model's snapshot (workflow)",
        description=f"Print where SOURCE's files are on this machine. {WORKFLOW_ONLY}",
    )
    p.set_defaults(func=locate_command)

    p = subparsers.add_parser(
        "promote",
        help="make a step's model the variant that select chose, by hard links (workflow)",
        description="Read SELECTED (written by `mergeflow select`) and give the step the chosen "
        f"variant's model and digest, so the next step builds on the best variant. {WORKFLOW_ONLY}",
    )
    p.add_argument("selected", type=Path, help="the selection JSON of `mergeflow select`")
    p.add_argument("--model", required=True, type=Path, help="the step's model directory to create")
    p.add_argument("--digest", required=True, type=Path, help="the step's digest file to write")
    p.set_defaults(func=promote_command)

    p = subparsers.add_parser(
        "upload",
        help="upload a step's model to the Hub with a lineage model card (workflow)",
        description=f"Upload STEP's model and a model card describing its lineage. {WORKFLOW_ONLY}",
    )
    p.add_argument("step", help="the step whose model is uploaded")
    p.add_argument("--manifest", required=True, help="the step's manifest (its lineage)")
    p.add_argument("--repo", required=True, help="target Hub repo, ORG/NAME")
    p.add_argument(
        "--private", action=argparse.BooleanOptionalAction, default=True, help="a private repo (default)"
    )
    p.add_argument("--output", required=True, type=Path, help="JSON record of the commit")
    p.set_defaults(func=upload_command)


@one_line_errors()
def lock_command(args) -> int:
    from mergeflow.pipeline.hub import ensure_locked, read_lock

    try:
        config = yaml.safe_load(Path(args.config).read_text())
    except OSError as err:
        raise PipelineError(f"{args.config}: cannot read it: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise yaml_error(args.config, err) from None
    if not isinstance(config, dict) or "recipes" not in config:
        raise PipelineError(f"{args.config}: not a mergeflow config (no recipes:)")
    plan = Plan(config)
    before = read_lock(plan.lockfile)
    entries = ensure_locked(plan.lockfile, list(plan.fetched.values()), refresh=args.refresh)
    for key, entry in entries.items():
        old = before.get(key, {}).get("commit")
        change = "new" if old is None else "unchanged" if old == entry["commit"] else f"was {old[:12]}"
        print(f"{key} -> {entry['commit']} ({change})")
    print(f"{len(entries)} Hub model(s) locked in {plan.lockfile}")
    return 0


@one_line_errors()
def digest_command(args) -> int:
    from mergeflow.pipeline.fingerprint import digest

    write_atomic(args.output, digest(args.source, args.lock))
    return 0


@one_line_errors()
def locate_command(args) -> int:
    from mergeflow.pipeline.hub import entry_for, fetch

    print(args.source if Path(args.source).is_dir() else fetch(entry_for(args.lock, args.source)))
    return 0


@one_line_errors()
def promote_command(args) -> int:
    selected = read_json(args.selected).get("selected")
    source = Path(node_path(str(selected), "model"))
    if not selected or not source.is_dir():
        raise PipelineError(f"{args.selected}: selected variant {selected!r} has no model at {source}")
    _link_tree(source, args.model)
    write_atomic(args.digest, Path(node_path(selected, "digest")).read_text())
    print(f"promoted {selected}")
    return 0


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link ``source``'s files into a new ``target`` (copies across filesystems), atomically."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = make_dir(target.parent, f".{target.name}.")  # the user's umask, not mkdtemp's 0700
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True, copy_function=link_or_copy)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@one_line_errors()
def upload_command(args) -> int:
    from mergeflow.pipeline.upload import upload_step

    record = upload_step(args.step, args.manifest, args.repo, args.private)
    write_json_atomic(args.output, record)
    print(f"uploaded {args.step} to {record['url']}")
    return 0
