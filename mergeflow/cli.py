"""The ``mergeflow`` command: one subcommand per pipeline stage, each defined beside its code."""

from __future__ import annotations

import argparse
import sys

from mergeflow import __version__
from mergeflow.engine import cli as engine_cli
from mergeflow.pipeline import cli as pipeline_cli
from mergeflow.pipeline import run as pipeline_run
from mergeflow.quality import cli as quality_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergeflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mergeflow {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (engine_cli, quality_cli, pipeline_cli, pipeline_run):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
