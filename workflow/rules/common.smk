import hashlib
import json
import os
import re
import shlex
from pathlib import Path

from snakemake.exceptions import IncompleteCheckpointException, WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

from mergeflow.pipeline.fingerprint import file_stats
from mergeflow.pipeline.hub import ensure_locked
from mergeflow.pipeline.recipes import PipelineError, Plan
from mergeflow.quality.files import read_json

validate(config, schema="../schemas/config.schema.yaml")

# The conda envs (envs/*.yaml) pip-install this checkout from here.
os.environ.setdefault("MERGEFLOW_SRC", workflow.basedir)

try:
    PLAN = Plan(config)
    # Resolves (network) and writes lock entries only for Hub models not locked yet.
    LOCK = ensure_locked(PLAN.lockfile, list(PLAN.inputs.values()))
except PipelineError as err:
    raise WorkflowError(str(err)) from None

COMMITS = {key: entry["commit"] for key, entry in LOCK.items()}
GATE = config.get("gate")
STOP = bool(GATE and GATE["stop"])
LOCAL_STATS = {
    name: file_stats(model.path)
    for name, model in PLAN.inputs.items()
    if not model.is_hub
}
MERGE = config["merge"]
EVALUATION = config["evaluation"]
UPLOAD = config["upload"]


def one_of(names):
    """A wildcard constraint matching exactly ``names`` (and nothing when there are none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def node_name(wildcards):
    """The node a ``{node}`` wildcard denotes; inputs live under results/inputs/NAME."""
    return wildcards.node.removeprefix("inputs/")


# ---------------------------------------------------------------- caching: what each job lists


def checkpoint_outputs(name):
    """The digests checkpoints write for model ``name``: its own, and for a step promoted from
    its best variant, its variants'."""
    variants = PLAN.nodes[name].variants if name in PLAN.nodes else []
    return [PLAN.path(n, "digest") for n in [name, *variants]]


def pending_gate(step):
    """A placeholder for ``step``'s gate while it has not run (jobs listing it wait), else None."""
    try:
        checkpoints.gate.get(node=step)
    except IncompleteCheckpointException as pending:
        return pending.targetfile
    return None


def read_then_ancient(reads, others):
    """``reads`` as they are, then the ``others`` not among them flagged ancient(), each once."""
    reads = list(dict.fromkeys(reads))
    return reads + [ancient(f) for f in dict.fromkeys(others) if f not in reads]


def depends(name, reads, also=()):
    """The input of a job about node ``name``: ``reads``, the files whose content it uses, then
    every other checkpoint output upstream of it flagged ancient(), then the gates that could
    still stop it.

    Why list them: when a checkpoint finishes, Snakemake re-decides only the jobs that list its
    output, and the others keep the first plan's verdict ("input updated by another job").
    Listing every upstream checkpoint output has each job re-decided after each of them, so a
    model rebuilt with identical bytes (an identical digest: same checksum) reruns nothing
    downstream. ancient() keeps the listed files from triggering reruns by their mtime, so only
    ``reads`` decide. A pending gate is the one checkpoint listed plainly: jobs wait for it.
    """
    upstream = [f for a in PLAN.ancestors(name) for f in checkpoint_outputs(a)]
    files = read_then_ancient(reads, upstream + list(also))
    if STOP:
        files += [gate for gate in map(pending_gate, PLAN.step_ancestors(name)) if gate]
    return files


def eval_files(name):
    """The evaluation results that stand for a model (a promoted step: its selected variant's)."""
    node = PLAN.nodes.get(name)
    if node is not None and node.variants:
        return [PLAN.path(name, "selected")] + [
            PLAN.path(v, "eval") for v in node.variants
        ]
    return [PLAN.path(name, "eval")]


# ---------------------------------------------------------------- gates and targets


def gate_verdict(step):
    """``step``'s gate JSON once it has run, else None."""
    if pending_gate(step):
        return None
    return read_json(PLAN.path(step, "gate"))


def stopped_by(name):
    """The step whose failed gate stops ``name`` (with gate.stop), else None."""
    if STOP:
        for step in PLAN.step_ancestors(name):
            verdict = gate_verdict(step)
            if verdict and verdict["stop"]:
                return step
    return None


def gate_files(name):
    return [PLAN.path(name, "gate")] if GATE and name in PLAN.nodes else []


def node_targets(name):
    return checkpoint_outputs(name) + eval_files(name) + gate_files(name)


def reached():
    """Every node no failed gate stops; a pending gate counts as passed until it runs (the jobs
    behind it wait for it, and the plan is redone when it finishes)."""
    return [name for name in [*PLAN.inputs, *PLAN.nodes] if not stopped_by(name)]


def reached_targets():
    return list(dict.fromkeys(f for name in reached() for f in node_targets(name)))


def report_inputs():
    """The results the report reads; it lists stopped steps as not run."""
    names = reached()
    return read_then_ancient(
        [f for n in names for f in eval_files(n) + gate_files(n)],
        [f for n in names for f in checkpoint_outputs(n)],
    )


def upload_steps():
    """Configured steps, or by default the last step of each chain."""
    return UPLOAD["steps"] or [
        s.name for s in PLAN.steps if not PLAN.descendants(s.name)
    ]


def upload_targets():
    if not UPLOAD["enabled"]:
        return []
    steps = upload_steps()
    unknown = sorted(set(steps) - {s.name for s in PLAN.steps})
    if unknown:
        raise WorkflowError(f"upload.steps: no such step(s): {', '.join(unknown)}")
    wanted = [s for s in steps if not stopped_by(s)]
    if GATE:  # never publish a step that failed its own gate
        wanted = [s for s in wanted if (gate_verdict(s) or {}).get("passed", True)]
    return [f"results/{step}/upload.json" for step in wanted]


def final_targets(wildcards):
    pages = ["results/report/index.html", "results/report/metrics.csv"]
    return pages + reached_targets() + upload_targets()


def announce_gate_stops():
    """One line for each failed gate that stopped the steps built on it."""
    for step in PLAN.steps:
        verdict = STOP and not stopped_by(step.name) and gate_verdict(step.name)
        if verdict and verdict["stop"]:
            skipped = PLAN.descendants(step.name)
            names = f": {', '.join(skipped)}" if skipped else ""
            logger.warning(f"mergeflow: {verdict['reason']}{names}")


# ---------------------------------------------------------------- rule parameters


def model_mb(name):
    """Approximate size of a model in MB: from the lock, a local dir, or (merged) its largest parent."""
    if name in PLAN.inputs and PLAN.inputs[name].is_hub:
        files = LOCK[PLAN.inputs[name].lock_key]["files"].values()
        sizes = [f["size"] or 0 for f in files]
    elif name in LOCAL_STATS:
        sizes = [size for size, _ in LOCAL_STATS[name].values()]
    else:
        return max(model_mb(parent) for parent in PLAN.nodes[name].parents)
    return sum(sizes) // 2**20 + 1


def merge_options():
    options = ["--device", MERGE["device"], "--random-seed", str(MERGE["random_seed"])]
    options += ["--out-shard-size", MERGE["out_shard_size"], "--quiet"]
    if MERGE["allow_crimes"]:
        options.append("--allow-crimes")
    return shlex.join(options + MERGE["extra_args"])


def evaluation_options():
    options = [
        "--tasks",
        *EVALUATION["tasks"],
        "--batch-size",
        str(EVALUATION["batch_size"]),
    ]
    options += ["--device", EVALUATION["device"], "--dtype", EVALUATION["dtype"]]
    for key in ("include_path", "num_fewshot", "limit"):
        if EVALUATION[key] is not None:
            options += [f"--{key.replace('_', '-')}", str(EVALUATION[key])]
    return shlex.join(options)


def source(wildcards):
    """The model a job reads: a local dir, a merged dir, or a locked Hub ``repo@commit``."""
    return PLAN.source(node_name(wildcards), COMMITS)


def engine_config_text(wildcards):
    return PLAN.engine_config(wildcards.node, COMMITS)


def manifest_text(names, stopped=()):
    return json.dumps(PLAN.manifest(names, COMMITS, stopped), indent=2) + "\n"


def report_manifest_text():
    """All nodes; those a failed gate stopped are listed without results (the report: not run)."""
    return manifest_text(
        [*PLAN.inputs, *PLAN.nodes], [n for n in PLAN.nodes if stopped_by(n)]
    )


def step_manifest_text(wildcards):
    """What a step's gates (its variants' too), selection and upload read."""
    return manifest_text(PLAN.closure(wildcards.node))


def text_sha256(text):
    """Generated files carry their content's hash as a param: a change reruns the rule, and
    the reason Snakemake prints stays one line."""
    return hashlib.sha256(text.encode()).hexdigest()


def write_generated(output, log, text):
    """Materialise content computed from the config and recipes (run by the local rules)."""
    Path(output[0]).write_text(text)
    Path(log[0]).write_text(f"wrote {output[0]}\n")


def check_engine_config(node, text):
    """Parse with the engine's own parser, method registry and parameter types, so that a typo
    or a bad value in a late step fails when the workflow is parsed, not hours later."""
    from mergeflow.engine.errors import MergeflowError
    from mergeflow.engine.validate import check_config

    try:
        check_config(text)
    except MergeflowError as err:
        raise WorkflowError(f"{PLAN.nodes[node].recipe}: step {node}: {err}") from None


def check_cuda_build():
    """``device: cuda`` needs a torch built with CUDA; fail now, not after jobs were queued.
    (Whether a GPU is visible is checked by each job: the login node of a cluster has none.)
    """
    keys = [
        f"{s}.device"
        for s, c in (("merge", MERGE), ("evaluation", EVALUATION))
        if c["device"] == "cuda"
    ]
    if keys:
        import torch

        if torch.version.cuda is None:
            raise WorkflowError(
                f"{keys[0]}: cuda, but this torch {torch.__version__} was built without CUDA; "
                "set device: cpu or install a CUDA build of torch"
            )


for _node in PLAN.merged:
    check_engine_config(_node, PLAN.engine_config(_node, COMMITS))
check_cuda_build()
