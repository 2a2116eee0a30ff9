"""Recipes (mergekit-multi style YAML) turned into the pipeline's graph of models.

A recipe document is a mergekit config plus ``name:``, optionally ``variants:`` and ``select:``.
Users name inputs the way they think of them (an alias from the config, a local directory, a Hub
repo, an earlier step); the engine needs concrete references, so every merged node gets its own
engine config with those names replaced. Everything here is pure planning: no weights, no network.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mergeflow.engine.errors import MergeflowError

RESULTS = "results"
VARIANT_SEP = "--"
RESERVED = {"inputs", "report", "logs"}
# Step, variant and alias names become directory names and Snakemake wildcards; "--" is reserved
# for variant nodes (STEP--VARIANT), so a name can never collide with one.
NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.]|-(?!-))*$")
HUB_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
RECIPE_KEYS = {"name", "variants", "select", "expect"}
ADAPTER_CONFIG = "adapter_config.json"  # what makes a directory a PEFT adapter
# What a variant of a MoE step (mergekit-moe config) may set besides per-expert overrides.
MOE_VARIANT_KEYS = {"gate_mode", "experts_per_token", "dtype", "architecture", "experts", "shared_experts"}


def is_moe_document(doc: dict) -> bool:
    """A step is a MoE build (``mergeflow moe``) when it lists experts or says ``merge_method: moe``."""
    return "experts" in doc or doc.get("merge_method") == "moe"


class PipelineError(MergeflowError):
    """A config, recipe or lock problem; the message names the file and key."""


def yaml_error(label: str, err: Exception) -> PipelineError:
    """A YAML parse error as one line naming the file (PyYAML's own message spans several)."""
    return PipelineError(f"{label}: not valid YAML: {' '.join(str(err).split())}")


@dataclass(frozen=True)
class InputModel:
    """A model the recipes start from: a Hub repo at a revision, or a local directory."""

    name: str
    repo: str | None = None
    revision: str | None = None
    path: str | None = None

    @property
    def is_hub(self) -> bool:
        return self.repo is not None

    @property
    def lock_key(self) -> str:
        return f"{self.repo}@{self.revision}"


@dataclass
class Node:
    """A merged model (a step without variants, or one variant) or a step built from variants."""

    name: str
    kind: str  # "step" or "variant"
    step: str
    recipe: str
    document: dict
    parents: list[str]
    variants: list[str] = field(default_factory=list)
    select_metric: str | None = None
    overrides: dict = field(default_factory=dict)
    adapters: list[str] = field(default_factory=list)  # LoRA adapters its ``model+lora`` references apply
    expect: str | None = None  # a published model this step must equal (``mergeflow verify``)

    @property
    def method(self) -> str:
        return "moe" if self.is_moe else str(self.document.get("merge_method"))

    @property
    def is_moe(self) -> bool:
        return is_moe_document(self.document)

    @property
    def is_merged(self) -> bool:
        """Variant steps are promoted from their best variant, everything else is merged."""
        return not self.variants


def node_path(name: str, what: str, is_input: bool = False) -> str:
    """Where a node's artefacts live; the rules' output patterns follow the same layout."""
    root = f"{RESULTS}/inputs/{name}" if is_input else f"{RESULTS}/{name}"
    return {
        "model": f"{root}/model",
        "digest": f"{root}/model.sha256",
        "eval": f"{root}/eval/results.json",
        "config": f"{root}/merge.yml",
        "gate": f"{root}/gate.json",
        "manifest": f"{root}/manifest.json",
        "selected": f"{root}/selected.json",
        "provenance": f"{root}/model/provenance.json",
        "verify": f"{root}/verify.json",
    }[what]


def parse_ref(value, where: str) -> tuple[str, str | None]:
    """``path[@revision]`` or the dict forms ``{path, revision}`` / ``{model: ...}`` as (path, revision)."""
    if isinstance(value, dict):
        if "model" in value:
            return parse_ref(value["model"], where)
        if isinstance(value.get("path"), str):
            revision = value.get("revision")
            return value["path"], None if revision is None else str(revision)
    if not isinstance(value, str) or not value.strip():
        raise PipelineError(f"{where}: expected a model reference, got {value!r}")
    path, sep, revision = value.partition("@")
    if not path or (sep and not revision) or "@" in revision:
        raise PipelineError(f"{where}: expected PATH or PATH@REVISION, got {value!r}")
    return path, revision or None


def split_lora(value, where: str) -> tuple:
    """A reference as (model, adapter or None): ``MODEL+ADAPTER`` (each side ``PATH[@REV]``) or
    ``{model: ..., lora: ...}``, as the engine reads them (mergekit-semantics §2.2)."""
    if isinstance(value, dict) and "model" in value:
        return value["model"], value.get("lora")
    if isinstance(value, str) and "+" in value:
        parts = value.split("+")
        if len(parts) != 2:
            raise PipelineError(f"{where}: expected MODEL or MODEL+LORA, with at most one '+', got {value!r}")
        return parts[0], parts[1]
    return value, None


def ref_key(value, where: str) -> tuple:
    """What identifies a reference: its model and its adapter, each as (path, revision)."""
    model, adapter = split_lora(value, where)
    return parse_ref(model, where), None if adapter is None else parse_ref(adapter, f"{where} (lora)")


def _parts(doc: dict):
    """The top level and each module: the places that hold ``models``/``slices``."""
    yield doc, ""
    for name, module in (doc.get("modules") or {}).items():
        if isinstance(module, dict):
            yield module, f"modules.{name}."


def _model_entries(part: dict, prefix: str):
    """``models[]`` items and slice sources: the entries that carry per-model parameters."""
    for i, entry in enumerate(part.get("models") or []):
        if isinstance(entry, dict) and "model" in entry:
            yield entry, f"{prefix}models[{i}]"
    for i, piece in enumerate(part.get("slices") or []):
        for j, source in enumerate(piece.get("sources") or [] if isinstance(piece, dict) else []):
            if isinstance(source, dict) and "model" in source:
                yield source, f"{prefix}slices[{i}].sources[{j}]"


def ref_slots(doc: dict):
    """Yield (mapping, key, where) for every model reference in a mergekit or mergekit-moe config."""
    for part, prefix in _parts(doc):
        bases = [(part, prefix)] + [
            (piece, f"{prefix}slices[{i}].") for i, piece in enumerate(part.get("slices") or []) if isinstance(piece, dict)
        ]
        for holder, where in bases:
            if holder.get("base_model") is not None:
                yield holder, "base_model", f"{where}base_model"
        for entry, where in _model_entries(part, prefix):
            yield entry, "model", f"{where}.model"
    tokenizer = doc.get("tokenizer") if isinstance(doc.get("tokenizer"), dict) else {}
    for holder, key, where in [(doc, "tokenizer_source", "tokenizer_source"), (tokenizer, "source", "tokenizer.source")]:
        if holder.get(key) is not None and holder[key] not in ("union", "base"):
            yield holder, key, where
    for token, spec in (tokenizer.get("tokens") or {}).items():
        source = spec.get("source") if isinstance(spec, dict) else None
        if isinstance(source, str) and source not in ("union", "base"):
            yield spec, "source", f"tokenizer.tokens.{token}.source"
        elif isinstance(source, dict) and "model" in source:
            yield source, "model", f"tokenizer.tokens.{token}.source.model"
    for key in ("experts", "shared_experts"):
        for i, expert in enumerate(doc.get(key) or []):
            if isinstance(expert, dict) and "source_model" in expert:
                yield expert, "source_model", f"{key}[{i}].source_model"


def _apply_variant(doc: dict, spec, where: str) -> dict:
    """A copy of ``doc`` with the variant's parameter overrides merged in (one level deep)."""
    if is_moe_document(doc):
        return _apply_moe_variant(doc, spec, where)
    if not isinstance(spec, dict) or set(spec) - {"parameters", "models"}:
        raise PipelineError(f"{where}: a variant is a mapping with 'parameters' and/or 'models'")
    doc = copy.deepcopy(doc)
    overrides = spec.get("parameters") or {}
    if not isinstance(overrides, dict):
        raise PipelineError(f"{where}.parameters: must be a mapping")
    if overrides:
        doc["parameters"] = {**(doc.get("parameters") or {}), **overrides}
    models = spec.get("models") or {}
    if not isinstance(models, dict):
        raise PipelineError(f"{where}.models: must map a model reference to parameter overrides")
    for ref, params in models.items():
        target = ref_key(ref, f"{where}.models")
        holders = [
            entry
            for part, prefix in _parts(doc)
            for entry, at in _model_entries(part, prefix)
            if ref_key(entry["model"], at) == target
        ]
        if not holders:
            raise PipelineError(f"{where}.models: {ref!r} is not a model of this step")
        if not isinstance(params, dict):
            raise PipelineError(f"{where}.models.{ref}: must be a mapping of parameters")
        for holder in holders:
            holder["parameters"] = {**(holder.get("parameters") or {}), **params}
    return doc


def _apply_moe_variant(doc: dict, spec, where: str) -> dict:
    """A MoE step's variant: top-level keys (gate_mode, experts_per_token, ...) replaced, and
    ``models: {REF: {positive_prompts: [...], ...}}`` merged into the experts whose source_model is REF."""
    allowed = MOE_VARIANT_KEYS | {"models"}
    if not isinstance(spec, dict) or set(spec) - allowed:
        raise PipelineError(f"{where}: a variant of a MoE step is a mapping with 'models' and/or {', '.join(sorted(MOE_VARIANT_KEYS))}")
    doc = copy.deepcopy(doc)
    doc.update({k: copy.deepcopy(v) for k, v in spec.items() if k != "models"})
    models = spec.get("models") or {}
    if not isinstance(models, dict):
        raise PipelineError(f"{where}.models: must map an expert's source_model to overrides")
    for ref, settings in models.items():
        target = parse_ref(ref, f"{where}.models")
        holders = [
            expert
            for key in ("experts", "shared_experts")
            for i, expert in enumerate(doc.get(key) or [])
            if isinstance(expert, dict) and parse_ref(expert.get("source_model"), f"{where}: {key}[{i}]") == target
        ]
        if not holders:
            raise PipelineError(f"{where}.models: {ref!r} is not an expert of this step")
        if not isinstance(settings, dict):
            raise PipelineError(f"{where}.models.{ref}: must be a mapping of expert settings")
        for holder in holders:
            holder.update(copy.deepcopy(settings))
    return doc


def recipe_files(entries, base: Path) -> list[Path]:
    """The recipe files a config's ``recipes:`` names: files, or directories of *.yaml/*.yml."""
    files: list[Path] = []
    for entry in [entries] if isinstance(entries, str) else entries:
        path = base / entry
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                raise PipelineError(f"recipes: directory {entry} holds no .yaml/.yml recipe")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise PipelineError(f"recipes: {entry} does not exist")
    return files


def _load_documents(path: Path, label: str) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as err:
        raise yaml_error(label, err) from None
    if not docs:
        raise PipelineError(f"{label}: no recipe documents")
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise PipelineError(f"{label}: document {i + 1} is not a mapping")
    return docs


class Plan:
    """Inputs and nodes of all recipes, in definition order (which is a valid build order)."""

    def __init__(self, config: dict, base: Path = Path(".")):
        self.base = base
        self.lockfile = config.get("lockfile", "config/models.lock")
        self.aliases = dict(config.get("models") or {})
        self.gate = config.get("gate")
        self.inputs: dict[str, InputModel] = {}
        self.adapters: dict[str, InputModel] = {}  # LoRA adapters: fetched and digested, never evaluated
        self.nodes: dict[str, Node] = {}
        for name in self.aliases:
            self._check_name(name, f"models.{name}")
        for path in recipe_files(config["recipes"], base):
            label = os.path.relpath(path, base)
            for doc in _load_documents(path, label):
                self._add_step(doc, label)

    # ------------------------------------------------------------------ building

    def _check_name(self, name, where: str) -> None:
        if not isinstance(name, str) or not NAME_RE.match(name) or name in RESERVED:
            raise PipelineError(
                f"{where}: invalid name {name!r} (letters, digits, '_', '.', single '-'; "
                f"not {', '.join(sorted(RESERVED))})"
            )

    def _add_step(self, doc: dict, label: str) -> None:
        name = doc.get("name")
        where = f"{label}: step {name!r}"
        self._check_name(name, f"{label}: name")
        if name in self.nodes or name in self.inputs or name in self.aliases:
            other = self.nodes[name].recipe if name in self.nodes else "an input model"
            raise PipelineError(f"{where}: the name is already used by {other}")
        engine_doc = {k: v for k, v in doc.items() if k not in RECIPE_KEYS}
        if "merge_method" not in engine_doc and not is_moe_document(engine_doc):
            raise PipelineError(f"{where}: merge_method is required (or experts: for a MoE step)")
        parents = self._resolve_parents(engine_doc, where)
        adapters = list(dict.fromkeys(adapter for *_, adapter in self._refs(engine_doc, where) if adapter))
        variants = doc.get("variants") or {}
        select = doc.get("select")
        if not isinstance(variants, dict):
            raise PipelineError(f"{where}: variants must map a variant name to overrides")
        if select is not None and not variants:
            raise PipelineError(f"{where}: select: needs variants:")
        step = Node(name, "step", name, label, engine_doc, parents, expect=self._expect(doc, where), adapters=adapters)
        if variants:
            if select is not None and not (isinstance(select, dict) and isinstance(select.get("metric"), str)):
                raise PipelineError(f"{where}: select must be {{metric: NAME}}")
            step.select_metric = (select or {}).get("metric") or (self.gate or {}).get("metric")
            if not step.select_metric:
                raise PipelineError(f"{where}: variants need select: {{metric: ...}} (or a gate metric)")
        for variant, spec in variants.items():
            self._check_name(variant, f"{where}: variant")
            node_name = f"{name}{VARIANT_SEP}{variant}"
            document = _apply_variant(engine_doc, spec, f"{where}: variants.{variant}")
            overrides = dict(spec.get("parameters") or {}) if not step.is_moe else {
                k: v for k, v in spec.items() if k != "models"
            }
            for ref, params in (spec.get("models") or {}).items():
                overrides.update({f"{ref}.{key}": value for key, value in params.items()})
            self.nodes[node_name] = Node(
                node_name, "variant", name, label, document, parents, overrides=overrides, adapters=adapters
            )
            step.variants.append(node_name)
        self.nodes[name] = step  # after its variants: the order the report lists them in

    def _expect(self, doc: dict, where: str) -> str | None:
        """``expect: REPO[@REV]``: the published model the step is verified against."""
        if doc.get("expect") is None:
            return None
        repo, revision = parse_ref(doc["expect"], f"{where}: expect")
        if not HUB_RE.match(repo) and not (self.base / repo).is_dir():
            raise PipelineError(f"{where}: expect: {doc['expect']!r} is not a Hub repo ORG/NAME[@REV] or a local directory")
        return f"{repo}@{revision}" if revision else repo

    def _refs(self, doc: dict, where: str):
        """Yield (mapping, key, node name, adapter name or None) for every model reference in ``doc``."""
        for holder, key, slot in ref_slots(doc):
            at = f"{where}: {slot}"
            model, adapter = split_lora(holder[key], at)
            parent = self._resolve(*parse_ref(model, at), at)
            if adapter is not None:
                adapter = self._resolve(*parse_ref(adapter, f"{at}.lora"), f"{at}.lora", kind="adapter")
            yield holder, key, parent, adapter

    def _resolve_parents(self, doc: dict, where: str) -> list[str]:
        parents = list(dict.fromkeys(parent for _, _, parent, _ in self._refs(doc, where)))
        if not parents:
            raise PipelineError(f"{where}: names no models")
        return parents

    def _resolve(self, path: str, revision: str | None, where: str, kind: str = "model") -> str:
        """The node name a reference denotes: a step, an alias, a local directory or a Hub repo
        (a LoRA adapter, ``kind='adapter'``, cannot be a step)."""
        if revision is None and path in self.nodes and self.nodes[path].kind == "step":
            if kind == "adapter":
                raise PipelineError(f"{where}: step {path!r} is a model, not a LoRA adapter")
            return path
        if revision is None and path in self.aliases:
            alias = self.aliases[path]
            return self._add_input(path, *parse_ref(alias, f"models.{path}"), f"models.{path}", kind)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "--", f"{path}@{revision}" if revision else path).strip("-.")
        return self._add_input(name, path, revision, where, kind)

    def _add_input(self, name: str, path: str, revision: str | None, where: str, kind: str = "model") -> str:
        if (self.base / path).is_dir():
            if revision is not None:
                raise PipelineError(f"{where}: local directory {path} cannot take a revision")
            if kind == "adapter" and not (self.base / path / ADAPTER_CONFIG).is_file():
                raise PipelineError(f"{where}: {path} is not a LoRA adapter (it has no {ADAPTER_CONFIG})")
            model = InputModel(name, path=os.path.normpath(path))
        elif HUB_RE.match(path):
            model = InputModel(name, repo=path, revision=revision or "main")
        else:
            raise PipelineError(
                f"{where}: {path!r} is not an earlier step, an alias in models:, a local directory or a Hub repo"
            )
        mine, other = (self.adapters, self.inputs) if kind == "adapter" else (self.inputs, self.adapters)
        if mine.setdefault(name, model) != model or name in self.nodes:
            raise PipelineError(f"{where}: {path!r} and another model both map to the name {name!r}")
        if name in other:
            raise PipelineError(f"{where}: {name!r} is used both as a model and as a LoRA adapter")
        return name

    # ------------------------------------------------------------------ queries

    @property
    def fetched(self) -> dict[str, InputModel]:
        """Everything fetched (Hub), pinned in the lock and digested: input models and adapters."""
        return {**self.inputs, **self.adapters}

    def upstream_adapters(self, name: str) -> list[str]:
        """The adapters ``name`` and the steps it is built from apply, without repeats."""
        names = [n for n in [name, *self.step_ancestors(name)] if n in self.nodes]
        return list(dict.fromkeys(a for n in names for a in self.nodes[n].adapters))

    @property
    def steps(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "step"]

    @property
    def merged(self) -> list[str]:
        return [n.name for n in self.nodes.values() if n.is_merged]

    @property
    def variant_steps(self) -> list[str]:
        return [n.name for n in self.steps if n.variants]

    @property
    def expecting(self) -> list[str]:
        """Steps verified against a published model."""
        return [n.name for n in self.steps if n.expect]

    def path(self, name: str, what: str) -> str:
        return node_path(name, what, name in self.fetched)

    def ancestors(self, name: str) -> list[str]:
        """Every model ``name`` is built from (inputs and steps), nearest first, without repeats."""
        seen: list[str] = []
        queue = list(self.nodes[name].parents) if name in self.nodes else []
        while queue:
            parent = queue.pop(0)
            if parent not in seen:
                seen.append(parent)
                queue.extend(self.nodes[parent].parents if parent in self.nodes else [])
        return seen

    def step_ancestors(self, name: str) -> list[str]:
        return [a for a in self.ancestors(name) if a in self.nodes]

    def descendants(self, step: str) -> list[str]:
        """Steps built (directly or not) from ``step``."""
        return [s.name for s in self.steps if step in self.ancestors(s.name)]

    def source(self, name: str, commits: dict[str, str]) -> str:
        """The concrete reference the engine and evaluation get for a model."""
        if name in self.fetched:
            model = self.fetched[name]
            return f"{model.repo}@{commits[model.lock_key]}" if model.is_hub else model.path
        return self.path(name, "model")

    def engine_config(self, name: str, commits: dict[str, str]) -> str:
        """The node's mergekit config with every reference made concrete (Hub ones pinned), both
        sides of a ``model+lora`` reference, in the form the recipe used."""
        node = self.nodes[name]
        doc = copy.deepcopy(node.document)
        for holder, key, parent, adapter in self._refs(doc, f"{node.recipe}: step {name!r}"):
            model = self.source(parent, commits)
            if adapter is None:
                holder[key] = model
            elif isinstance(holder[key], dict):
                holder[key] = {**holder[key], "model": model, "lora": self.source(adapter, commits)}
            else:
                holder[key] = f"{model}+{self.source(adapter, commits)}"
        header = f"# {node.name}: generated by mergeflow from {node.recipe}; edit the recipe, not this file\n"
        return header + yaml.safe_dump(doc, sort_keys=False)

    def manifest_entry(self, name: str, commits: dict[str, str], ran: bool = True, checks: bool = False) -> dict:
        """One node of the manifest that gate, select, report and upload read. A node a failed
        gate stopped names no results, so that files left from an earlier run are not reported.
        ``checks`` adds the ``expect:`` verification (the report's manifest only: a step's own
        manifest must not change, and rerun its gates, when only ``expect:`` changes)."""
        if name in self.inputs:
            return {
                "name": name,
                "kind": "input",
                "parents": [],
                "source": self.source(name, commits),
                "eval": self.path(name, "eval"),
            }
        node = self.nodes[name]
        entry = {"name": name, "kind": node.kind, "method": node.method, "parents": list(node.parents)}
        if node.kind == "variant":
            entry.update(variant_of=node.step, overrides=node.overrides)
        if node.adapters:  # pinned like inputs, but not models of their own (never evaluated)
            entry["adapters"] = {a: self.source(a, commits) for a in node.adapters}
        if node.variants:  # evaluated through its selected variant, never twice
            entry.update(variants=list(node.variants), selected=self.path(name, "selected"))
        else:
            entry["eval"] = self.path(name, "eval")
        entry.update(config=self.engine_config(name, commits), provenance=self.path(name, "provenance"))
        if self.gate:
            entry["gate"] = self.path(name, "gate")
        if checks and node.expect:
            entry.update(expect=node.expect, verify=self.path(name, "verify"))
        return entry if ran else {k: v for k, v in entry.items() if k not in ("eval", "provenance", "gate", "verify")}

    def manifest(self, names: list[str], commits: dict[str, str], stopped: tuple = (), checks: bool = False) -> dict:
        """The manifest restricted to ``names``; gate and select settings travel with it."""
        manifest = {"nodes": [self.manifest_entry(n, commits, n not in stopped, checks) for n in names]}
        if self.gate:
            manifest["gate"] = dict(self.gate)
        manifest["select"] = {
            s: {"metric": self.nodes[s].select_metric} for s in self.variant_steps if s in names
        }
        return manifest

    def closure(self, step: str) -> list[str]:
        """A step, its variants and all it is built from, in manifest order: what its gates,
        selection and model card read (and nothing downstream, so editing a later step leaves
        this manifest, and hence these jobs, untouched)."""
        names = {step, *self.ancestors(step)}
        names |= {v for n in names if n in self.nodes for v in self.nodes[n].variants}
        return [n for n in [*self.inputs, *self.nodes] if n in names]
