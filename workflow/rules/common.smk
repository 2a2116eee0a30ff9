import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from snakemake.exceptions import IncompleteCheckpointException, WorkflowError
from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

from mergeflow.pipeline.fingerprint import file_stats
from mergeflow.pipeline.hub import ensure_locked
from mergeflow.pipeline.recipes import PipelineError, Plan
from mergeflow.quality.files import read_json

validate(config, schema="../schemas/config.schema.yaml")


def check_devices():
    """``device: cuda`` with a torch built without CUDA fails now, not after GPU jobs queued.
    The build is what counts: a login node without a GPU may still submit CUDA jobs."""
    keys = [
        f"{section}.device"
        for section in ("merge", "evaluation")
        if config[section]["device"] == "cuda"
    ]
    if keys:
        import torch

        if not torch.backends.cuda.is_built():
            raise WorkflowError(
                f"{keys[0]}: cuda, but this torch {torch.__version__} has no CUDA support; "
                f"install a CUDA build of torch, or set {' and '.join(keys)} to cpu"
            )


check_devices()

# The conda envs (envs/*.yaml) pip-install this checkout from here.
os.environ.setdefault("MERGEFLOW_SRC", workflow.basedir)

try:
    PLAN = Plan(config)
    # Resolves (network) and writes lock entries only for Hub models not locked yet.
    LOCK = ensure_locked(PLAN.lockfile, list(PLAN.fetched.values()))
except PipelineError as err:
    raise WorkflowError(str(err)) from None

COMMITS = {key: entry["commit"] for key, entry in LOCK.items()}
GATE = config.get("gate")
STOP = bool(GATE and GATE["stop"])
LOCAL_STATS = {
    name: file_stats(model.path)
    for name, model in PLAN.fetched.items()
    if not model.is_hub
}
MERGE = config["merge"]
EVALUATION = config["evaluation"]
UPLOAD = config["upload"]
CLUSTER = config["cluster"]


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
    upstream += [PLAN.path(a, "digest") for a in PLAN.upstream_adapters(name)]
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


def verify_files(name):
    return [PLAN.path(name, "verify")] if name in PLAN.expecting else []


def node_targets(name):
    return (
        checkpoint_outputs(name)
        + eval_files(name)
        + gate_files(name)
        + verify_files(name)
    )


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
        [f for n in names for f in eval_files(n) + gate_files(n) + verify_files(n)],
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
    if name in PLAN.fetched and PLAN.fetched[name].is_hub:
        files = LOCK[PLAN.fetched[name].lock_key]["files"].values()
        sizes = [f["size"] or 0 for f in files]
    elif name in LOCAL_STATS:
        sizes = [size for size, _ in LOCAL_STATS[name].values()]
    else:
        return max(model_mb(parent) for parent in PLAN.nodes[name].parents)
    return sum(sizes) // 2**20 + 1


def merge_command(wildcards):
    """``mergeflow moe`` for a step with experts (a mergekit-moe config), else ``mergeflow merge``."""
    return "moe" if PLAN.nodes[wildcards.node].is_moe else "merge"


def merge_options():
    options = ["--device", MERGE["device"], "--random-seed", str(MERGE["random_seed"])]
    # No --quiet: in a job's log the merge reports progress as a few lines.
    options += ["--out-shard-size", MERGE["out_shard_size"]]
    if MERGE["allow_crimes"]:
        options.append("--allow-crimes")
    return shlex.join(options + MERGE["extra_args"])


def evaluation_options():
    # In the order of earlier versions, so that an unchanged config reruns no evaluation.
    options = ["--tasks", *EVALUATION["tasks"]] if EVALUATION["tasks"] else []
    options += ["--batch-size", str(EVALUATION["batch_size"])]
    options += ["--device", EVALUATION["device"], "--dtype", EVALUATION["dtype"]]
    for key in ("include_path", "num_fewshot", "suite"):
        if EVALUATION[key] is not None:
            options += [f"--{key.replace('_', '-')}", str(EVALUATION[key])]
    limit = EVALUATION["limit"]
    if limit is not None:
        per_task = limit.items() if isinstance(limit, dict) else []
        values = [f"{t}={n}" for t, n in per_task] if per_task else [str(limit)]
        options += ["--limit", *values]
    if EVALUATION["model_args"]:
        pairs = [f"{k}={v}" for k, v in EVALUATION["model_args"].items()]
        options += ["--model-args", ",".join(pairs)]
    return shlex.join(options)


def confidence_option():
    """The significance level the gate and the report test at (config report.confidence)."""
    return f"--confidence {config['report']['confidence']}"


def source(wildcards):
    """The model a job reads: a local dir, a merged dir, or a locked Hub ``repo@commit``."""
    return PLAN.source(node_name(wildcards), COMMITS)


def engine_config_text(wildcards):
    return PLAN.engine_config(wildcards.node, COMMITS)


def manifest_text(names, stopped=(), checks=False):
    return json.dumps(PLAN.manifest(names, COMMITS, stopped, checks), indent=2) + "\n"


def report_manifest_text():
    """All nodes; those a failed gate stopped are listed without results (the report: not run)."""
    return manifest_text(
        [*PLAN.inputs, *PLAN.nodes],
        [n for n in PLAN.nodes if stopped_by(n)],
        checks=True,
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
    from mergeflow.moe.config import parse_moe_config

    try:
        if PLAN.nodes[node].is_moe:
            parse_moe_config(text)
        else:
            check_config(text)
    except MergeflowError as err:
        raise WorkflowError(f"{PLAN.nodes[node].recipe}: step {node}: {err}") from None


# ---------------------------------------------------------------- where jobs run, what they ask for

# The config's cluster options (config/README.md) that go to SLURM as they are, by the resource
# names snakemake-executor-plugin-slurm reads.
SLURM_RESOURCES = {
    "partition": "slurm_partition",
    "account": "slurm_account",
    "qos": "qos",
    "constraint": "constraint",
    "slurm_extra": "slurm_extra",
}


def runs_locally(family):
    """Whether a family of rules runs on the submitting node (``cluster.FAMILY.where: local``)."""
    return CLUSTER[family]["where"] == "local"


def job_resources(family, mem_mb=None, runtime=None, cpus=1, device="cpu"):
    """What a job of ``family`` asks for: the family's ``cluster`` options where set, else the
    estimates given (functions of the wildcards, or numbers). Options left unset are not sent,
    so the profile's default-resources and the cluster's defaults apply.
    """
    options = CLUSTER[family]
    resources = {
        name: options[key]
        for key, name in SLURM_RESOURCES.items()
        if options.get(key) is not None
    }
    gpus = options.get("gpus")
    gpus = int(device == "cuda") if gpus is None else gpus
    if options.get("gpu_model") and not gpus:
        raise WorkflowError(
            f"cluster.{family}.gpu_model: set, but the jobs ask for no GPU"
        )
    if gpus:
        resources["gpu"] = gpus
        if options.get("gpu_model"):
            resources["gpu_model"] = options["gpu_model"]
    resources["cpus_per_task"] = options.get("cpus") or cpus
    for key, estimate in (("mem_mb", mem_mb), ("runtime", runtime)):
        if options.get(key) or estimate:
            resources[key] = options.get(key) or estimate
    return resources


def download_minutes(wildcards):
    """A download or upload job's runtime: 10 minutes, plus 2 per GB of the model (about
    8 MB/s, and the hashing)."""
    name = wildcards.model if hasattr(wildcards, "model") else wildcards.node
    return 10 + 2 * model_mb(name) // 1024


# ---------------------------------------------------------------- checks before any job runs


def put_mergeflow_on_path():
    """Jobs run ``mergeflow`` from PATH: put the bin dir of the Python running Snakemake (the
    venv) first, so they find its mergeflow without an activated venv. Cluster jobs inherit the
    PATH and reread this file with the same Python. With ``--sdm conda`` each env has its own.
    """
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "").split(os.pathsep)
    if (Path(bin_dir) / "mergeflow").exists() and path[0] != bin_dir:
        os.environ.update(PATH=os.pathsep.join([bin_dir, *path]))
    if shutil.which("mergeflow") is None:
        raise WorkflowError(
            f"mergeflow: command not found, neither beside {sys.executable} nor on PATH; run "
            "Snakemake from the venv mergeflow is installed in (.venv/bin/snakemake, or "
            "`source .venv/bin/activate` first)"
        )


def remove_staging_leftovers():
    """Merges and promotions build a model in a hidden sibling (``results/NODE/.model.*``) and
    rename it into place; one killed halfway (scancel, a node failure, SIGKILL) leaves that
    behind. The engine's own cleanup removes it, only with the model's output lock free, so a job
    still running (e.g. one a killed Snakemake left on the cluster) keeps its staging directory.
    """
    from mergeflow.engine import outdir
    from mergeflow.engine.errors import OutputError

    for node in PLAN.nodes:
        model = Path(PLAN.path(node, "model")).absolute()
        if not model.parent.is_dir():
            continue
        try:
            with outdir.output_lock(model):
                removed = outdir.remove_leftovers(model)
        except OutputError as err:  # held: a live job's
            logger.info(f"mergeflow: {err}")
            continue
        for leftover in removed:
            logger.info(
                f"mergeflow: removed {os.path.relpath(leftover)}, left by an interrupted job"
            )


def check_cluster_environment():
    """What cluster jobs need from the submitting shell, checked before the first submission."""
    if not workflow.non_local_exec:
        return
    hub_models = any(m.is_hub for m in PLAN.inputs.values())
    if hub_models and not (os.environ.get("HF_HOME") or os.environ.get("HF_HUB_CACHE")):
        raise WorkflowError(
            "HF_HOME is not set: cluster jobs read Hub models from the HF cache, which must be "
            "on a filesystem all nodes share, at the same path; export HF_HOME=/shared/.../hf"
        )
    if os.environ.get("HF_TOKEN"):
        logger.warning(
            "mergeflow: HF_TOKEN is exported, so every cluster job's environment carries it; "
            "prefer the token file: unset HF_TOKEN and run `hf auth login` (writes "
            "$HF_HOME/token), or point HF_TOKEN_PATH at a file readable only by you"
        )


put_mergeflow_on_path()


for _node in PLAN.merged:
    check_engine_config(_node, PLAN.engine_config(_node, COMMITS))
