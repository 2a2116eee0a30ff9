"""Everything written beside the weights: config, tokenizer, model card, verbatim config, provenance."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import yaml

from mergeflow import __version__
from mergeflow.engine.architecture import layer_count_key
from mergeflow.engine.config import DTYPES, MergeConfig, ModelRef
from mergeflow.engine.outdir import PROVENANCE_FILE
from mergeflow.methods import MethodSpec

# Copied from the donor when it has a tokenizer (mergekit-semantics §10.5).
TOKENIZER_FILES = (
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
    "added_tokens.json", "merges.txt", "chat_template.jinja", "chat_template.json",
    "generation_config.json", "video_preprocessor_config.json",
)
log = logging.getLogger("mergeflow")
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def write_model_config(out: Path, donor_config: dict, config: MergeConfig, layer_sources: list[int] | None) -> None:
    """The donor's config with the dtype set and, for slices, the layer count of the output.

    Per-layer lists (``layer_types``) are rebuilt from each output layer's source layer, since
    transformers rejects a config whose list length differs from the layer count.
    """
    merged = dict(donor_config)
    dtype = config.out_dtype or config.dtype
    if dtype is not None:
        merged["dtype"] = _DTYPE_NAMES[dtype]
        if "torch_dtype" in merged:
            merged["torch_dtype"] = _DTYPE_NAMES[dtype]
    key = layer_count_key(merged)
    if layer_sources is not None and key is not None:
        per_layer = merged.get("layer_types")
        if isinstance(per_layer, list) and len(per_layer) == merged[key] and max(layer_sources) < len(per_layer):
            merged["layer_types"] = [per_layer[i] for i in layer_sources]
        merged[key] = len(layer_sources)
    (out / "config.json").write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")


def copy_tokenizer(donor: Path, out: Path) -> None:
    if not (donor / "tokenizer_config.json").is_file():
        return
    if not ((donor / "tokenizer.json").is_file() or (donor / "tokenizer.model").is_file()):
        return
    for name in TOKENIZER_FILES:
        if (donor / name).is_file():
            if not inside_model(donor, donor / name):
                log.warning("not copying %s: it is a link to %s, outside the model directory", donor / name, (donor / name).resolve())
                continue
            shutil.copyfile(donor / name, out / name)


def inside_model(model: Path, file: Path) -> bool:
    """Whether ``file`` resolves inside ``model`` -- for a Hugging Face cache snapshot, inside its
    own repo folder, whose snapshot files link into the repo's ``blobs/``."""
    root = model.resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        root = root.parent.parent
    return file.resolve().is_relative_to(root)


def is_hub_reference(ref: ModelRef) -> bool:
    """A reference the model card can link: ``org/name`` that is not a local path (no network call)."""
    path = ref.path
    return not path.startswith(("/", "~", ".")) and path.count("/") <= 1 and not Path(path).exists()


def write_model_card(out: Path, title: str, config: MergeConfig, method: MethodSpec) -> None:
    base = config.base_model
    hub_models = [str(r) for r in config.referenced_models() if is_hub_reference(r)]
    front = yaml.dump({"base_model": hub_models, "library_name": "transformers", "tags": ["mergekit", "merge", "mergeflow"]})
    name = method.pretty_name or method.name
    method_line = f"[{name}]({method.reference_url})" if method.reference_url else name
    if base is not None and method.name != "slerp":
        method_line += f" using {_md_model(base)} as a base"
    merged = [r for r in config.referenced_models() if r != base or method.name == "slerp"]
    lines = [
        "---", front.rstrip(), "---", f"# {title}", "",
        "This is a merge of pre-trained language models created with "
        "[mergeflow](https://github.com/mergeflow/mergeflow), whose engine reproduces mergekit 0.1.5 bit for bit.",
        "", "## Merge Details", "### Merge Method", "", f"This model was merged using the {method_line} merge method.",
        "", "### Models Merged", "", "The following models were included in the merge:",
        *[f"* {_md_model(r)}" for r in merged],
        "", "### Configuration", "", "The following YAML configuration was used to produce this model:", "",
        "```yaml", config.text.rstrip(), "```", "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def _md_model(ref: ModelRef) -> str:
    return f"[{ref}](https://huggingface.co/{ref.path})" if is_hub_reference(ref) else str(ref)


def write_provenance(out: Path, record: dict) -> None:
    (out / PROVENANCE_FILE).write_text(json.dumps({"mergeflow_version": __version__, **record}, indent=2) + "\n")
