"""``mergeflow reproduce``: rebuild a published merge from the Hub alone and verify it bit for bit.

What is rebuilt comes from the published repo: ``mergeflow_recipe.yml`` when present (every step,
inputs pinned, seeds recorded: written by ``mergeflow upload``), else ``mergekit_config.yml`` (one
merge; a ``provenance.json`` beside it supplies the seed when mergeflow made it). Inputs are pinned
(see ``inputs``), pre-flighted from headers, downloaded with their sha256 checked against a lock
written into OUT, merged by our engine, and the result compared with the published weights.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from mergeflow.engine import outdir
from mergeflow.engine.errors import MergeflowError
from mergeflow.pipeline.published import CONFIG_FILE, RECIPE_FILE, RECIPE_VERSION
from mergeflow.pipeline.recipes import parse_ref
from mergeflow.verify.inputs import PinnedInput, commit_date, config_references, header_checkpoints, pin_inputs, pinned_config
from mergeflow.verify.candidates import try_candidates
from mergeflow.verify.sides import VerifyError, hub_failure, hub_side, local_side
from mergeflow.verify.verify import compare_models

MOE_CONFIG_FILE = "mergekit_moe_config.yml"
LOCK_FILE = "mergeflow.lock"


@dataclass
class Step:
    """One merge of the published model's recipe; the last step is the published model."""

    name: str
    document: dict
    seed: int | None
    options: dict = field(default_factory=dict)  # allow_crimes, unsafe_truncate_embeddings
    pinned: dict = field(default_factory=dict)
    text: str = ""  # the config the engine runs, references pinned

    @property
    def method(self) -> str:
        return str(self.document.get("merge_method"))


def published_steps(repo: str, commit: str) -> tuple[str, list[Step]]:
    """What built ``repo@commit``: the recipe's steps, or the single mergekit config."""
    from huggingface_hub import list_repo_files

    try:
        files = set(list_repo_files(repo, revision=commit))
    except Exception as err:
        raise hub_failure(f"{repo}@{commit}", err) from None
    if RECIPE_FILE in files:
        return RECIPE_FILE, _recipe_steps(_read_yaml(repo, commit, RECIPE_FILE))
    if CONFIG_FILE in files:
        document = _read_yaml(repo, commit, CONFIG_FILE)
        if not isinstance(document, dict):
            raise VerifyError(f"{repo}@{commit}: {CONFIG_FILE} is not a mapping")
        provenance = _read_json(repo, commit, "provenance.json") if "provenance.json" in files else {}
        made_here = provenance.get("merge_method") == document.get("merge_method")
        seed = provenance.get("seed") if made_here else None
        options = provenance.get("options", {}) if made_here else {}
        return CONFIG_FILE, [Step(repo, document, seed, _merge_options(options))]
    if MOE_CONFIG_FILE in files:
        raise VerifyError(f"{repo}@{commit}: {MOE_CONFIG_FILE}: reproducing MoE merges is not supported yet")
    raise VerifyError(f"{repo}@{commit}: no {RECIPE_FILE} or {CONFIG_FILE}: nothing says how it was merged")


def _recipe_steps(recipe) -> list[Step]:
    if not isinstance(recipe, dict) or recipe.get("version") != RECIPE_VERSION or not recipe.get("steps"):
        raise VerifyError(f"{RECIPE_FILE}: not a version-{RECIPE_VERSION} mergeflow recipe with steps:")
    if recipe.get("local_inputs"):
        raise VerifyError(f"{RECIPE_FILE}: built from local input(s) {', '.join(map(str, recipe['local_inputs']))}, "
                          "which are not on the Hub: it cannot be reproduced from the Hub alone")
    steps = []
    for i, entry in enumerate(recipe["steps"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict) or not entry.get("name"):
            raise VerifyError(f"{RECIPE_FILE}: steps[{i}] needs name: and config:")
        steps.append(Step(str(entry["name"]), entry["config"], entry.get("seed"), _merge_options(entry.get("options") or {})))
    return steps


def _merge_options(options: dict) -> dict:
    return {k: bool(options[k]) for k in ("allow_crimes", "unsafe_truncate_embeddings") if k in options}


def _read_yaml(repo: str, commit: str, name: str):
    try:
        return yaml.safe_load(Path(_download(repo, commit, name)).read_text())
    except yaml.YAMLError as err:
        raise VerifyError(f"{repo}@{commit}: {name}: not valid YAML: {' '.join(str(err).split())}") from None


def _read_json(repo: str, commit: str, name: str) -> dict:
    try:
        data = json.loads(Path(_download(repo, commit, name)).read_text())
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _download(repo: str, commit: str, name: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, name, revision=commit)
    except Exception as err:
        raise hub_failure(f"cannot download {name} of {repo}@{commit}", err) from None


def reproduce(reference: str, out: Path, inputs_as_of: datetime | None, say=print) -> dict:
    """Rebuild ``reference`` into ``out`` and compare it with the published weights; the record."""
    from mergeflow.methods import get_method

    repo, revision = _parse(reference)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VerifyError(f"{out}: exists and is not empty; reproduce writes a new directory")
    commit, published = commit_date(repo, revision or "main")
    source, steps = published_steps(repo, commit)
    as_of = inputs_as_of or published
    say(f"reproducing {repo}@{commit} (published {published.isoformat()}) from {source}")
    names = {s.name for s in steps[:-1]}
    warnings = []
    for step in steps:
        step.pinned = pin_inputs(step.document, f"{source}: {step.name}", as_of, published, skip=names)
        try:
            method = get_method(step.method)
        except KeyError as err:
            raise VerifyError(f"{source}: {step.name}: {err.args[0]}") from None
        if method.draws_random and step.seed is None:
            warnings.append(f"{step.name}: '{step.method}' draws random numbers and no seed was published, so "
                            "exact reproduction is impossible; the comparison shows how close it comes")
    for line in warnings:
        say(f"warning: {line}")
    inputs = {p.reference: p for s in steps for p in s.pinned.values()}
    say(f"inputs (explicit revisions, else the last commit at or before {as_of.isoformat()}):")
    for pinned in inputs.values():
        say(f"  {pinned.repo} -> {pinned.commit} ({pinned.date}; {pinned.rule})")

    final = steps[-1]
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = outdir.make_dir(out.absolute().parent, f".{out.name}.steps-")
    try:
        plans = {}
        for step in steps:  # pre-flight every step whose inputs are all on the Hub: no weight bytes
            step.text = pinned_config(step.document, f"{source}: {step.name}", step.pinned,
                                      {n: str(staging / n) for n in names})
            if not set(_step_refs(step)) & names:
                plans[step.name] = _plan(step)
        lock = _fetch_inputs(inputs)
        for step in steps:
            say(f"merging {step.name} ({step.method})" + (f" with seed {step.seed}" if step.seed is not None else ""))
            _merge(step, out if step is final else staging / step.name)
        plan = plans.get(final.name) or _plan(final)  # earlier steps are built now: read their headers
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    record = {
        "published": f"{repo}@{commit}",
        "published_date": published.isoformat(),
        "inputs_as_of": as_of.isoformat(),
        "source": source,
        "exact_reproduction_possible": not warnings,
        "warnings": warnings,
        "steps": [{"name": s.name, "merge_method": s.method, "seed": s.seed,
                   "inputs": [p.as_dict() for p in s.pinned.values()]} for s in steps],
    }
    _write_lock(out, lock)
    _record_provenance(out, record)
    published_side = hub_side(repo, commit)
    record["verification"] = compare_models(local_side(out), published_side)
    if record["verification"]["verdict"] != "identical":
        record["diagnosis"] = _diagnose(record["verification"], plan, steps)
        first = next((d["name"] for d in record["verification"]["differing"] if d["problem"] == "values"), None)
        if first and not set(_step_refs(final)) & names:  # single merges: candidates of its own inputs
            say(f"trying nearby commits of the inputs on {first} alone")
            record["diagnosis"]["candidates"] = try_candidates(
                final, first, record["diagnosis"]["feeding_inputs"], published_side, f"{source}: {final.name}")
    return record


def _parse(reference: str) -> tuple[str, str | None]:
    try:
        return parse_ref(reference, "REPO")
    except MergeflowError as err:
        raise VerifyError(str(err)) from None


def _step_refs(step: Step) -> list[str]:
    return [repo for _, _, repo, _ in config_references(step.document, step.name)]


def _plan(step: Step):
    """The engine's own planning on headers read from the Hub: config, shape, vocabulary and
    architecture errors surface before any weight is downloaded."""
    from mergeflow.engine.plan import build_plan
    from mergeflow.methods import get_method

    config, checkpoints = header_checkpoints(step.text)
    return build_plan(config, get_method(config.merge_method), checkpoints,
                      step.options.get("allow_crimes", False), step.options.get("unsafe_truncate_embeddings", False))


def _fetch_inputs(inputs: dict[str, PinnedInput]) -> dict[str, dict]:
    """Lock each pinned input (commit + per-file sha256) and download it, checking every file's
    content against the lock."""
    from mergeflow.pipeline.hub import fetch, resolve
    from mergeflow.pipeline.recipes import InputModel

    lock = {}
    for key, pinned in inputs.items():
        entry = resolve(InputModel(pinned.repo, repo=pinned.repo, revision=pinned.commit))
        fetch(entry)
        lock[key] = entry
    return lock


def _merge(step: Step, target: Path) -> None:
    from mergeflow.engine.run import MergeOptions, run_merge

    options = MergeOptions(random_seed=step.seed, progress=False, **step.options)
    run_merge(step.text, target, options)


def _write_lock(out: Path, lock: dict[str, dict]) -> None:
    from mergeflow.pipeline.hub import write_lock

    write_lock(out / LOCK_FILE, lock)


def _record_provenance(out: Path, record: dict) -> None:
    from mergeflow.engine.outputs import PROVENANCE_FILE
    from mergeflow.quality.files import write_json_atomic

    path = out / PROVENANCE_FILE
    provenance = json.loads(path.read_text())
    provenance["reproduction"] = record
    write_json_atomic(path, provenance)


def _diagnose(verification: dict, plan, steps: list[Step]) -> dict:
    """Which inputs feed the differing tensors, and which other commits of them lie near the date."""
    differing = {d["name"] for d in verification["differing"]} | set(verification["only_in_model"])
    by_name = {s.name: s for s in steps}
    pinned = {p.repo: p for s in steps for p in s.pinned.values()}

    def leaves(path: str) -> set[str]:
        """The Hub inputs behind a merge input: itself, or all inputs of an earlier step."""
        if path in pinned:
            return {path}
        step = by_name.get(Path(path).name)
        return set().union(*(leaves(r) for r in _step_refs(step))) if step else set()

    feeding: dict[str, set[str]] = {}
    for task in plan.tasks:
        if task.output_name in differing:
            for source in task.inputs:
                for repo in leaves(source.model.path):
                    feeding.setdefault(repo, set()).add(task.output_name)
    return {
        "feeding_inputs": sorted(feeding),
        "tensors_by_input": {repo: sorted(tensors) for repo, tensors in sorted(feeding.items())},
        "nearby_commits": {r: pinned[r].near for r in sorted(feeding) if pinned[r].near and not pinned[r].explicit},
    }


def diagnosis_lines(record: dict) -> list[str]:
    diagnosis = record.get("diagnosis")
    if not diagnosis:
        return []
    lines = []
    if not record["exact_reproduction_possible"]:
        lines.append("note: a random method without a published seed: differences are expected")
    if diagnosis["feeding_inputs"]:
        lines.append(f"the differing tensors are computed from: {', '.join(diagnosis['feeding_inputs'])}")
    for tried in diagnosis.get("candidates", []):
        if tried["reproduces"]:
            pins = ", ".join(f"{repo}@{commit}" for repo, commit in tried["inputs"].items())
            lines.append(f"{tried['tensor']} is reproduced with {pins}: the publisher likely used "
                         f"{'that commit' if len(tried['inputs']) == 1 else 'those commits'}")
    for repo, near in diagnosis["nearby_commits"].items():
        listed = ", ".join(f"{c['commit'][:12]} ({c['date']})" for c in near[:5])
        lines.append(f"{repo} has other commits near the date: {listed}; try --inputs-as-of DATE or pin "
                     f"{repo}@COMMIT in a local copy of the config and run `mergeflow merge`")
    if not diagnosis["nearby_commits"] and record["exact_reproduction_possible"]:
        lines.append("no other commits of these inputs lie near the date: the publisher may have used a local "
                     "copy, other merge options, or a tool that does not match mergekit 0.1.5")
    return lines
