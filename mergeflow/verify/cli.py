"""``mergeflow verify`` and ``mergeflow reproduce``: does a model equal a published one, bit for bit?

Exit status: 0 identical, 1 different, 2 bad input (one line on stderr naming what is wrong).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mergeflow.engine.cli import configure_logging
from mergeflow.engine.errors import one_line_errors
from mergeflow.quality.files import write_json_atomic

BAD_INPUT = 2


def register(subparsers) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "verify",
        help="compare a model with a reference, tensor by tensor (bit-identical or not, and by how much)",
        formatter_class=formatter,
        description="""\
Compare MODEL with REFERENCE tensor by tensor: names, dtypes, shapes and bytes.
Each is a local model directory or a Hub reference ORG/NAME[@REVISION].

Weight files whose sha256 agrees on both sides (for the Hub: the LFS sha256 it
lists) are identical without being read; everything else is streamed one tensor
at a time, so memory stays at the largest tensor. For each differing tensor it
prints the largest absolute difference, the largest distance in ULPs (units in
the last place of the tensor's dtype) and the fraction of elements that differ,
grouped by layer; tensors present on one side only are listed too. Only the
weights are compared (not config.json or the tokenizer).

exit status: 0 identical, 1 different, 2 bad input""",
        epilog="example: mergeflow verify ./my-merge org/published-merge@main --json verdict.json",
    )
    p.add_argument("model", metavar="MODEL", help="local model dir or ORG/NAME[@REV]")
    p.add_argument("reference", metavar="REFERENCE", help="local model dir or ORG/NAME[@REV] to compare against")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the full comparison as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=verify_command)

    p = subparsers.add_parser(
        "reproduce",
        help="rebuild a published merge from the Hub into OUT and verify it against the published weights",
        formatter_class=formatter,
        description="""\
Rebuild the published merge REPO[@REV] into the new directory OUT, then compare
OUT with the published weights as `mergeflow verify` does.

How it was built is read from the repo: mergeflow_recipe.yml (written by
`mergeflow upload`: every step of a gradual merge, inputs pinned, seeds
recorded) or else mergekit_config.yml (with the seed from provenance.json
when mergeflow made it).

Each input is pinned to a commit: an explicit @revision in the config wins;
otherwise the input repo's last commit at or before the published commit's
date (or --inputs-as-of DATE). The pins are printed, written to
OUT/mergeflow.lock with every file's sha256 (each download is checked
against it) and recorded in OUT/provenance.json. Before any weight is
downloaded, the merge is planned from the inputs' config.json and
safetensors headers, so config, shape, vocabulary and architecture errors
cost no weight bytes.

When the result differs it names the differing tensors, the inputs they are
computed from, and other commits of those inputs near the date. A random
method (DARE, DELLA) without a published seed cannot be reproduced exactly;
that is said up front.

exit status: 0 bit-identical, 1 different, 2 bad input""",
        epilog="example: mergeflow reproduce org/published-merge ./rebuilt --json reproduce.json",
    )
    p.add_argument("repo", metavar="REPO[@REV]", help="the published merge on the Hub")
    p.add_argument("out", type=Path, metavar="OUT", help="new (or empty) directory for the rebuilt model")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the pins, verdict and diagnosis as JSON")
    p.add_argument("--inputs-as-of", metavar="DATE",
                   help="pin inputs without @rev to their last commit at or before DATE (YYYY-MM-DD or ISO 8601) "
                   "instead of the publication date")
    p.set_defaults(func=reproduce_command)


@one_line_errors(BAD_INPUT)
def verify_command(args) -> int:
    from mergeflow.verify.sides import open_side
    from mergeflow.verify.verify import compare_models, summary_lines

    configure_logging(0)
    model, reference = open_side(args.model), open_side(args.reference)
    record = compare_models(model, reference, progress=not args.quiet and sys.stderr.isatty())
    print("\n".join(summary_lines(record)))
    if args.json:
        write_json_atomic(args.json, record)
    return 0 if record["verdict"] == "identical" else 1


@one_line_errors(BAD_INPUT)
def reproduce_command(args) -> int:
    from mergeflow.verify.inputs import parse_date
    from mergeflow.verify.reproduce import diagnosis_lines, reproduce
    from mergeflow.verify.verify import summary_lines

    configure_logging(0)
    as_of = parse_date(args.inputs_as_of) if args.inputs_as_of else None
    record = reproduce(args.repo, args.out, as_of)
    print("\n".join(summary_lines(record["verification"]) + diagnosis_lines(record)))
    if args.json:
        write_json_atomic(args.json, record)
    return 0 if record["verification"]["verdict"] == "identical" else 1
