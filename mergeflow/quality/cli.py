"""Subcommands of this area; ``register`` adds them to the ``mergeflow`` parser.

``evaluate``, ``gate``, ``select`` and ``report`` are the quality steps of the workflow. Each
returns an exit code; a failure prints one line to stderr so that Snakemake's log says why.
Heavy imports (lm-eval, matplotlib) happen inside the commands, after ``evaluate`` has had the
chance to set ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import argparse
import sys


def _one_line(error: BaseException) -> str:
    """An exception as one log line (a KeyError's str() would add quotes around its message)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    text = " ".join(str(message).split()) or "no message"
    return f"{type(error).__name__}: {text}"


def _number(text: str) -> int | float:
    """lm-eval's --limit: a count, or a fraction of each task when below 1."""
    value = float(text)
    return int(value) if value.is_integer() else value


def _batch_size(text: str) -> int | str:
    return text if text.startswith("auto") else int(text)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mergeflow.quality.evaluate import EvalOptions, evaluate
    from mergeflow.quality.files import write_json_atomic

    options = EvalOptions(
        tasks=tuple(args.tasks),
        include_path=args.include_path,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        offline=args.offline,
        threads=args.threads,
    )
    try:
        results = evaluate(args.model_dir, options)
    except Exception as error:  # noqa: BLE001 - any lm-eval failure becomes one line and exit 1
        print(f"mergeflow evaluate {args.model_dir}: {_one_line(error)}", file=sys.stderr)
        return 1
    write_json_atomic(args.output, results)
    seconds = float(results["total_evaluation_time_seconds"])
    print(f"evaluated {args.model_dir} in {seconds:.1f} s → {args.output}")
    return 0


def _step_json(args: argparse.Namespace, decide) -> dict | None:
    """Write ``decide(manifest, node)`` for ``--step`` to ``--output`` and return it; on a bad
    manifest, step or metric print one line naming the step and return None."""
    from mergeflow.quality.files import write_json_atomic
    from mergeflow.quality.report import load_manifest

    try:
        manifest = load_manifest(args.manifest)
        result = decide(manifest, manifest.node(args.step))
    except (KeyError, ValueError, OSError) as error:
        print(f"mergeflow {args.command} {args.step}: {_one_line(error)}", file=sys.stderr)
        return None
    write_json_atomic(args.output, result)
    return result


def _gate_verdict(manifest, node) -> dict:
    """The gate JSON of ``node``, its gate metric against its parents' (a pass without a gate)."""
    from mergeflow.quality.gate import no_gate, parse_gate, verdict
    from mergeflow.quality.metrics import lookup
    from mergeflow.quality.report import manifest_table

    if not manifest.gate:
        return no_gate(node.name)
    gate = parse_gate(manifest.gate)
    table = manifest_table(manifest)
    value, _ = lookup(table, node.name, gate.metric)
    parents = {p: lookup(table, p, gate.metric)[0] for p in node.parents}
    return verdict(gate, node.name, value, parents, may_stop=node.kind != "variant")


def _selection(manifest, node) -> dict:
    """The selection JSON of step ``node``: every variant ranked by the step's select metric."""
    from mergeflow.quality.metrics import lookup
    from mergeflow.quality.report import manifest_table
    from mergeflow.quality.variants import select

    if node.name not in manifest.select:
        raise KeyError(f"manifest 'select' has no entry for {node.name}")
    metric = str(manifest.select[node.name]["metric"])
    table = manifest_table(manifest)
    return select(node.name, {v: lookup(table, v, metric)[0] for v in node.variants}, metric)


def cmd_gate(args: argparse.Namespace) -> int:
    result = _step_json(args, _gate_verdict)
    if result is None:
        return 1
    print(result["reason"])
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    result = _step_json(args, _selection)
    if result is None:
        return 1
    best = result["ranking"][0]
    print(f"{args.step}: selected {best['name']} ({result['metric']} {best['value']:.4g})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mergeflow.quality.report import build

    try:
        written = build(args.manifest, args.out_dir)
    except (KeyError, ValueError, OSError) as error:
        print(f"mergeflow report: {_one_line(error)}", file=sys.stderr)
        return 1
    print(f"wrote {written['html']} and {written['metrics']}")
    return 0


def register(subparsers) -> None:
    """Add this area's subcommands; each sets ``func`` to a callable taking the parsed args."""
    p = subparsers.add_parser("evaluate", help="run lm-eval on a model directory")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--output", required=True, metavar="RESULTS_JSON", help="raw lm-eval results")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=["demo", "demo_nll"],
        metavar="T",
        help="lm-eval task or group names (default: the demo's)",
    )
    p.add_argument(
        "--include-path",
        default="workflow/demo/tasks",
        metavar="DIR",
        help="directory of extra task YAMLs (default: workflow/demo/tasks)",
    )
    p.add_argument("--num-fewshot", type=int, default=None, metavar="N")
    p.add_argument(
        "--limit",
        type=_number,
        default=None,
        metavar="N",
        help="documents per task (a fraction if below 1)",
    )
    p.add_argument("--batch-size", type=_batch_size, default=8, metavar="N")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads (default 1: tiny models are fastest on one)",
    )
    p.add_argument(
        "--offline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="set HF_HUB_OFFLINE=1 (default: when the model and all tasks are local)",
    )
    p.set_defaults(func=cmd_evaluate)

    for name, help_, output, func in (
        ("gate", "quality-gate verdict of one step", "GATE_JSON", cmd_gate),
        ("select", "rank a step's variants and pick the best", "SELECTED_JSON", cmd_select),
    ):
        p = subparsers.add_parser(name, help=help_)
        p.add_argument("--manifest", required=True, metavar="MANIFEST_JSON")
        p.add_argument("--step", required=True, metavar="NAME")
        p.add_argument("--output", required=True, metavar=output)
        p.set_defaults(func=func)

    p = subparsers.add_parser("report", help="write metrics.csv and the HTML report")
    p.add_argument("--manifest", required=True, metavar="MANIFEST_JSON")
    p.add_argument("--out-dir", default="results/report", metavar="DIR")
    p.set_defaults(func=cmd_report)
