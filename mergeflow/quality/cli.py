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

    try:
        limit, task_limits = _limits(args.limit)
        options = EvalOptions(
            tasks=tuple(args.tasks),
            suite=args.suite,
            include_path=args.include_path,
            num_fewshot=args.num_fewshot,
            limit=limit,
            task_limits=task_limits,
            batch_size=args.batch_size,
            model_args=args.model_args,
            device=args.device,
            dtype=args.dtype,
            offline=args.offline,
            threads=args.threads,
        )
        options.passes()  # bad tasks or limits fail here, before lm-eval loads
        results = evaluate(args.model_dir, options)
    except Exception as error:  # noqa: BLE001 - any lm-eval failure becomes one line and exit 1
        print(f"mergeflow evaluate {args.model_dir}: {_one_line(error)}", file=sys.stderr)
        return 1
    write_json_atomic(args.output, results)
    seconds = float(results["total_evaluation_time_seconds"])
    print(f"evaluated {args.model_dir} in {seconds:.1f} s → {args.output}")
    return 0


def _step_json(args: argparse.Namespace, decide) -> dict | None:
    """Write ``decide(manifest, node, args)`` for ``--step`` to ``--output`` and return it; on a
    bad manifest, step or metric print one line naming the step and return None."""
    from mergeflow.quality.files import write_json_atomic
    from mergeflow.quality.manifest import load_manifest

    try:
        manifest = load_manifest(args.manifest)
        result = decide(manifest, manifest.node(args.step), args)
    except (KeyError, ValueError, OSError) as error:
        print(f"mergeflow {args.command} {args.step}: {_one_line(error)}", file=sys.stderr)
        return None
    write_json_atomic(args.output, result)
    return result


def _gate_verdict(manifest, node, args) -> dict:
    """The gate JSON of ``node``, its gate metric against its parents' (a pass without a gate)."""
    from mergeflow.quality.gate import no_gate, parse_gate, verdict
    from mergeflow.quality.manifest import load_results
    from mergeflow.quality.metrics import direction, lookup, metrics_table, split_spec
    from mergeflow.quality.statistics import compare_pairs

    if not manifest.gate:
        return no_gate(node.name)
    results = load_results(manifest)
    table = metrics_table(results.items())
    metric = str(manifest.gate.get("metric", ""))
    value, _ = lookup(table, node.name, metric)
    gate = parse_gate(manifest.gate, direction(table, metric))
    parents = {p: lookup(table, p, gate.metric)[0] for p in node.parents}
    intervals = None
    if gate.significant:
        task, name = split_spec(gate.metric)
        rows = table[(table.task == task) & (table.metric == name)]
        pairs = [(node.name, p) for p in node.parents]
        tests = compare_pairs(rows, results, pairs, args.confidence)
        intervals = {r.parent: (r.ci_low, r.ci_high, r.method) for r in tests.itertuples()}
    return verdict(
        gate, node.name, value, parents, may_stop=node.kind != "variant", intervals=intervals
    )


def _selection(manifest, node, args) -> dict:
    """The selection JSON of step ``node``: every variant ranked by the step's select metric."""
    from mergeflow.quality.manifest import manifest_table
    from mergeflow.quality.metrics import direction, lookup
    from mergeflow.quality.variants import select

    if node.name not in manifest.select:
        raise KeyError(f"manifest 'select' has no entry for {node.name}")
    metric = str(manifest.select[node.name]["metric"])
    table = manifest_table(manifest)
    values = {v: lookup(table, v, metric)[0] for v in node.variants}
    return select(node.name, values, metric, direction(table, metric))


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
        written = build(args.manifest, args.out_dir, args.confidence)
    except (KeyError, ValueError, OSError) as error:
        print(f"mergeflow report: {_one_line(error)}", file=sys.stderr)
        return 1
    print(f"wrote {written['html']} and {written['metrics']}")
    return 0


def _level(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("a confidence level between 0 and 1, e.g. 0.95")
    return value


def _limits(values: list[str]) -> tuple[int | float | None, tuple[tuple[str, int | float], ...]]:
    """``--limit 40`` (every task) and/or ``--limit arc_challenge=100 ...`` (per task)."""
    overall, per_task = None, []
    for value in values:
        task, sep, number = value.rpartition("=")
        if sep:
            per_task.append((task, _number(number)))
        else:
            overall = _number(value)
    return overall, tuple(per_task)


def _model_args(text: str | None) -> tuple[tuple[str, str], ...]:
    """``attn_implementation=sdpa,trust_remote_code=true`` → pairs (lm-eval's --model_args)."""
    pairs = []
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"model args: {item!r} is not KEY=VALUE")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


WORKFLOW_ONLY = "Run by the workflow; by hand only to redo one step."


def register(subparsers) -> None:
    """Add this area's subcommands; each sets ``func`` to a callable taking the parsed args."""
    from mergeflow.quality.defaults import DEFAULT_LEVEL
    from mergeflow.quality.suites import SUITES

    p = subparsers.add_parser(
        "evaluate",
        help="run lm-eval on a model directory, keeping every item's score",
        description="Evaluate MODEL_DIR with lm-eval's hf model and write its results JSON, "
        "with each item's score for paired statistics. Name the tasks (--tasks), a standard "
        "suite (--suite), or both.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a Hugging Face model directory")
    p.add_argument(
        "--output", required=True, metavar="RESULTS_JSON", help="where the results JSON goes"
    )
    p.add_argument(
        "--tasks", nargs="+", default=[], metavar="TASK", help="lm-eval task or group names"
    )
    p.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default=None,
        help="a standard task set with its few-shot counts (open_llm_v2 adds the "
        "leaderboard's normalised scores as task open_llm_v2)",
    )
    p.add_argument(
        "--include-path", default=None, metavar="DIR", help="a directory of extra task YAMLs"
    )
    p.add_argument(
        "--num-fewshot",
        type=int,
        default=None,
        metavar="N",
        help="few-shot examples for the --tasks (default: each task's own); suites keep theirs",
    )
    p.add_argument(
        "--limit",
        nargs="+",
        default=[],
        metavar="N|TASK=N",
        help="documents per task (a fraction if below 1): N for every task, TASK=N for one",
    )
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=8,
        metavar="N|auto",
        help="lm-eval batch size, or auto (default 8)",
    )
    p.add_argument(
        "--model-args",
        type=_model_args,
        default=(),
        metavar="K=V,...",
        help="extra arguments of lm-eval's hf model, e.g. attn_implementation=sdpa",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", default="float32", help="model dtype (default float32)")
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

    confidence = argparse.ArgumentParser(add_help=False)
    confidence.add_argument(
        "--confidence",
        type=_level,
        default=DEFAULT_LEVEL,
        metavar="LEVEL",
        help=f"confidence level of the significance tests (default {DEFAULT_LEVEL:g})",
    )
    for name, help_, what, output, func in (
        (
            "gate",
            "quality-gate verdict of one step",
            "Apply the manifest's gate to STEP against its parents and write the verdict JSON.",
            "GATE_JSON",
            cmd_gate,
        ),
        (
            "select",
            "rank a step's variants and pick the best",
            "Rank STEP's variants by the manifest's select metric and write the selection JSON.",
            "SELECTED_JSON",
            cmd_select,
        ),
    ):
        p = subparsers.add_parser(
            name,
            help=f"{help_} (workflow)",
            description=f"{what} {WORKFLOW_ONLY}",
            parents=[confidence] if name == "gate" else [],
        )
        p.add_argument(
            "--manifest", required=True, metavar="MANIFEST_JSON", help="the recipe manifest"
        )
        p.add_argument("--step", required=True, metavar="STEP", help="the step (or variant)")
        p.add_argument("--output", required=True, metavar=output, help="where the JSON goes")
        p.set_defaults(func=func)

    p = subparsers.add_parser(
        "report",
        help="write metrics.csv and the HTML report (workflow)",
        description="Write metrics.csv, one plot per task and a self-contained index.html "
        f"comparing every step with its parents. {WORKFLOW_ONLY}",
        parents=[confidence],
    )
    p.add_argument("--manifest", required=True, metavar="MANIFEST_JSON", help="the recipe manifest")
    p.add_argument(
        "--out-dir",
        default="results/report",
        metavar="DIR",
        help="output directory (default %(default)s)",
    )
    p.set_defaults(func=cmd_report)
