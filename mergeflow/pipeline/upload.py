"""Publishing a step to the Hub, with a model card that says what it was merged from.

The card is built from the step's manifest (the step and all its ancestors), so a reader can trace
every weight back to a pinned Hub commit or local directory, and see the gate results on the way.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mergeflow.pipeline.hub import hub_error
from mergeflow.pipeline.recipes import PipelineError, node_path
from mergeflow.quality.files import read_json, read_optional_json


def _lineage(nodes: dict[str, dict], name: str, depth: int = 0) -> list[str]:
    node = nodes[name]
    pad = "  " * depth
    if node["kind"] == "input":
        return [f"{pad}- `{name}`: `{node['source']}`"]
    line = f"{pad}- **{name}** ({node['method']})"
    selected = read_optional_json(node.get("selected"))
    if selected:
        line += f", best of {', '.join(node['variants'])}: `{selected['selected']}`"
    gate = read_optional_json(node.get("gate"))
    if gate:
        verdict = "passed" if gate.get("passed") else "failed"
        line += f"; gate {verdict}: {gate.get('metric')} = {gate.get('value')}"
    return [line] + [row for parent in node["parents"] for row in _lineage(nodes, parent, depth + 1)]


def model_card(manifest: dict, step: str) -> str:
    """README.md for ``step``: Hub metadata (base models, tags), lineage tree and the merge config."""
    nodes = {node["name"]: node for node in manifest["nodes"]}
    if step not in nodes:
        raise PipelineError(f"manifest has no step {step!r}")
    hub_bases = sorted(
        {n["source"].partition("@")[0] for n in nodes.values() if n["kind"] == "input" and "@" in n["source"]}
    )
    meta = {"library_name": "transformers", "tags": ["merge", "mergeflow"]}
    if hub_bases:
        meta["base_model"] = hub_bases
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        f"# {step}",
        "",
        "Merged with mergeflow: a gradual merge, each step evaluated and gated before the next.",
        "",
        "## Lineage",
        "",
        *_lineage(nodes, step),
        "",
        "## Merge config",
        "",
        "```yaml",
        nodes[step]["config"].rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def upload_step(step: str, manifest_path: str, repo: str, private: bool) -> dict:
    """One commit holding the step's model files, with the lineage card as README.md."""
    from huggingface_hub import CommitOperationAdd, HfApi

    model_dir = Path(node_path(step, "model"))
    card = model_card(read_json(manifest_path), step)
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(model_dir).as_posix(), path_or_fileobj=str(path))
        for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.name != "README.md"
    ]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.create_commit(repo, operations, commit_message=f"mergeflow: upload step {step}")
    except Exception as err:
        raise hub_error(f"cannot upload {step} to {repo}", err) from None
    return {"step": step, "repo": repo, "commit": info.oid, "url": info.commit_url}
