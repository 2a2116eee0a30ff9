"""What an upload publishes so that ``mergeflow reproduce`` can rebuild it from the Hub alone.

The engine configs of a run name local things (``results/step1/model``, ``models/m1``) and the
provenance names absolute paths; none of that means anything to a reader of the Hub repo. Here
every reference becomes public: a Hub input its pinned ``repo@commit``, an earlier step its step
name, a local input its path relative to the run (which cannot be reproduced from the Hub, and the
recipe says so). For a step with variants, the configs are the selected variant's: the ones that
built the weights.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mergeflow.pipeline.recipes import node_path, ref_slots
from mergeflow.quality.files import read_json, read_optional_json

RECIPE_FILE = "mergeflow_recipe.yml"  # what mergeflow.verify.reproduce follows
CONFIG_FILE = "mergekit_config.yml"
RECIPE_VERSION = 1


def built_by(nodes: dict[str, dict], name: str) -> dict:
    """The node whose merge made ``name``'s weights: its selected variant, if it has variants."""
    node = nodes[name]
    if node.get("variants"):
        selected = (read_optional_json(node.get("selected")) or {}).get("selected")
        if selected not in nodes:
            raise ValueError(f"{name}: no selected variant yet ({node.get('selected')})")
        return nodes[selected]
    return node


def public_names(nodes: dict[str, dict]) -> dict[str, str]:
    """Each reference an engine config or provenance may hold -> what the published files say."""
    names = {}
    for name, node in nodes.items():
        if node["kind"] == "input":
            names[node["source"]] = node["source"]  # repo@commit, or a path relative to the run
        else:
            names[node_path(name, "model")] = name
            names.update({source: source for source in node.get("adapters", {}).values()})
    return names


def adapter_sources(nodes: dict[str, dict], names) -> list[str]:
    """The pinned sources of the LoRA adapters the nodes ``names`` apply."""
    return sorted({source for n in names for source in nodes[n].get("adapters", {}).values()})


def is_hub_source(source: str) -> bool:
    return "@" in source and not source.startswith((".", "/", "~"))


def public_document(nodes: dict[str, dict], name: str) -> dict:
    """The config that built ``name``, every model reference made public."""
    names = public_names(nodes)
    document = yaml.safe_load(built_by(nodes, name)["config"])
    for holder, key, _ in ref_slots(document):
        value = holder[key]
        if isinstance(value, dict) and "lora" in value:  # {model: ..., lora: ...}: each side
            holder[key] = {**value, **{k: names.get(str(value[k]), value[k]) for k in ("model", "lora")}}
        elif isinstance(value, str):  # MODEL or MODEL+LORA
            holder[key] = "+".join(names.get(side, side) for side in value.split("+"))
    return document


def steps_of(nodes: dict[str, dict], step: str) -> list[str]:
    """``step`` and the steps it is built from, in build (manifest) order."""
    wanted, queue = set(), [step]
    while queue:
        name = queue.pop()
        if name in wanted or nodes[name]["kind"] == "input":
            continue
        wanted.add(name)
        queue.extend(nodes[name]["parents"])
    return [n for n in nodes if n in wanted]


def local_inputs(nodes: dict[str, dict], step: str) -> list[str]:
    steps = steps_of(nodes, step)
    names = {p for s in steps for p in nodes[s]["parents"]}
    sources = [nodes[n]["source"] for n in names if nodes[n]["kind"] == "input"] + adapter_sources(nodes, steps)
    return sorted({source for source in sources if not is_hub_source(source)})


def recipe(nodes: dict[str, dict], step: str) -> dict:
    """Every step that built ``step`` with its public config, seed and merge options."""
    entries = []
    for name in steps_of(nodes, step):
        provenance = read_json(built_by(nodes, name)["provenance"])
        options = provenance.get("options", {})
        entries.append({
            "name": name,
            "seed": provenance.get("seed"),
            "options": {k: options[k] for k in ("allow_crimes", "unsafe_truncate_embeddings") if k in options},
            "config": public_document(nodes, name),
        })
    result = {"version": RECIPE_VERSION, "steps": entries}
    if local_inputs(nodes, step):
        result["local_inputs"] = local_inputs(nodes, step)
    return result


def recipe_text(nodes: dict[str, dict], step: str) -> str:
    header = (
        f"# mergeflow recipe: every merge that built {step}, Hub inputs pinned to commits, seeds recorded.\n"
        "# Rebuild and verify it with: mergeflow reproduce ORG/NAME OUT\n"
    )
    return header + yaml.safe_dump(recipe(nodes, step), sort_keys=False)


def config_text(nodes: dict[str, dict], step: str) -> str:
    earlier = [s for s in steps_of(nodes, step) if s != step]
    header = ""
    if earlier:
        header = (f"# {', '.join(earlier)}: earlier mergeflow step(s), built by {RECIPE_FILE}; "
                  "`mergeflow reproduce` rebuilds the whole chain.\n")
    return header + yaml.safe_dump(public_document(nodes, step), sort_keys=False)


def public_provenance(nodes: dict[str, dict], step: str) -> dict:
    """The step's provenance with the public config and references, and no absolute paths."""
    names = public_names(nodes)
    record = dict(read_json(built_by(nodes, step)["provenance"]))
    record["config"] = yaml.safe_dump(public_document(nodes, step), sort_keys=False)
    record.pop("config_sha256", None)  # of the local config text, which is not published
    record["inputs"] = [_public_input(item, names) for item in record.get("inputs", [])]
    return record


def _public_input(item: dict, names: dict[str, str]) -> dict:
    """A provenance input record with public references; a ``model+lora`` input's record names
    both sides (``BASE+ADAPTER``) and holds the adapter's own under ``lora``."""
    sides = zip(item["reference"].split("+"), item["identity"].split("+"))
    public = [(names.get(ref, Path(ref).name), ident) for ref, ident in sides]
    reference = "+".join(ref for ref, _ in public)
    identity = "+".join(ident if is_hub_source(ident) else ref for ref, ident in public)
    record = {**item, "reference": reference, "identity": identity}
    if "lora" in item:
        record["lora"] = _public_input(item["lora"], names)
    return record
