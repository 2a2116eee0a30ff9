"""Publishing a step to the Hub, with a model card that says what it was merged from.

The card is built from the step's manifest (the step and all its ancestors), so a reader can trace
every weight back to a pinned Hub commit or local directory, and see the gate results on the way.
Beside the weights go the files ``mergeflow reproduce`` rebuilds them from (see ``published``).
"""

from __future__ import annotations

import json
from pathlib import Path

from mergeflow.engine.outputs import PROVENANCE_FILE
from mergeflow.pipeline import published
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
    adapters = [f"{pad}  - `{a}` (LoRA adapter): `{source}`" for a, source in node.get("adapters", {}).items()]
    return [line] + adapters + [row for parent in node["parents"] for row in _lineage(nodes, parent, depth + 1)]


def model_card(manifest: dict, step: str, repo: str | None = None) -> str:
    """README.md for ``step``: Hub metadata, lineage tree, how to reproduce it, and its config."""
    from mergeflow.engine.card import CardContent, render
    from mergeflow.quality.metrics import tidy_rows

    nodes = {node["name"]: node for node in manifest["nodes"]}
    if step not in nodes:
        raise PipelineError(f"manifest has no step {step!r}")
    sources = [n["source"] for n in nodes.values() if n["kind"] == "input"]
    sources += published.adapter_sources(nodes, published.steps_of(nodes, step))
    hub_inputs = list(dict.fromkeys(source for source in sources if published.is_hub_source(source)))
    raw = read_optional_json(published.built_by(nodes, step).get("eval"))
    target = repo or "ORG/NAME"
    reproduce = [f"Every input is pinned to a Hub commit in `{published.CONFIG_FILE}`"]
    if len(published.steps_of(nodes, step)) > 1:
        reproduce[0] += f" and, with the earlier steps and their seeds, in `{published.RECIPE_FILE}`"
    reproduce[0] += ". Rebuild the weights and check them bit for bit with:"
    reproduce += ["", "```bash", f"mergeflow reproduce {target} rebuilt/", "```"]
    local = published.local_inputs(nodes, step)
    if local:
        reproduce += ["", f"Not reproducible from the Hub alone: built from local input(s) {', '.join(local)}."]
    content = CardContent(
        title=step,
        base_models=sorted({source.partition("@")[0] for source in hub_inputs}),
        sections=[
            ("Lineage", "Merged with mergeflow: a gradual merge, each step evaluated and gated before the next.\n\n"
             + "\n".join(_lineage(nodes, step))),
            ("Reproduce", "\n".join(reproduce)),
            ("Merge config", "```yaml\n" + published.config_text(nodes, step).rstrip() + "\n```"),
        ],
        licenses=[_hub_license(source) for source in hub_inputs] + [None] * len(local),
        eval_results=tidy_rows(raw, step) if raw else [],
        usage_repo=repo,
    )
    return render(content)


def _hub_license(source: str) -> str | None:
    """The licence a Hub input's card declares at its pinned commit, None if none or unreadable."""
    from huggingface_hub import HfApi

    repo, _, commit = source.partition("@")
    try:
        card = HfApi().model_info(repo, revision=commit).card_data
    except Exception:  # a parent we cannot read claims no licence
        return None
    return getattr(card, "license", None) if card else None


def _published_files(model_dir: Path) -> list[Path]:
    """The model's own files: no dotfiles, no bookkeeping, nothing we regenerate for the Hub."""
    regenerated = {"README.md", PROVENANCE_FILE, published.CONFIG_FILE, published.RECIPE_FILE}
    return [
        path for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.name not in regenerated
        and not any(part.startswith(".") for part in path.relative_to(model_dir).parts)
    ]


def upload_step(step: str, manifest_path: str, repo: str, private: bool) -> dict:
    """One commit: the model files, the card, the public config (and recipe) and provenance."""
    from huggingface_hub import CommitOperationAdd, HfApi

    model_dir = Path(node_path(step, "model"))
    nodes = {node["name"]: node for node in read_json(manifest_path)["nodes"]}
    try:
        generated = {
            "README.md": model_card({"nodes": list(nodes.values())}, step, repo),
            published.CONFIG_FILE: published.config_text(nodes, step),
            PROVENANCE_FILE: json.dumps(published.public_provenance(nodes, step), indent=2) + "\n",
        }
        if len(published.steps_of(nodes, step)) > 1:
            generated[published.RECIPE_FILE] = published.recipe_text(nodes, step)
    except (OSError, ValueError, KeyError) as err:
        raise PipelineError(f"cannot upload {step}: its results are incomplete ({err})") from None
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(model_dir).as_posix(), path_or_fileobj=str(path))
        for path in _published_files(model_dir)
    ]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=text.encode()) for name, text in generated.items()]
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.create_commit(repo, operations, commit_message=f"mergeflow: upload step {step}")
    except Exception as err:
        raise hub_error(f"cannot upload {step} to {repo}", err) from None
    return {"step": step, "repo": repo, "commit": info.oid, "url": info.commit_url}
