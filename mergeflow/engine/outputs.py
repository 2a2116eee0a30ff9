"""Everything written beside the weights: config, tokenizer, model card, verbatim config, provenance."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from mergeflow import __version__
from mergeflow.engine.architecture import layer_count_key
from mergeflow.engine.config import DTYPES, MergeConfig, ModelRef
from mergeflow.engine.errors import MergeflowError
from mergeflow.engine.tokenizer import load_tokenizer, save_tokenizer
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


def write_model_config(
    out: Path, donor_config: dict, config: MergeConfig, layer_sources: list[int] | None, vocab_size: int | None = None
) -> None:
    """The donor's config with the dtype set, for slices the layer count of the output, and with
    a built tokenizer its (padded) vocabulary size, set where the donor declares it.

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
    if vocab_size is not None:
        text_config = merged.get("text_config")
        if "vocab_size" not in merged and isinstance(text_config, dict) and "vocab_size" in text_config:
            merged["text_config"] = {**text_config, "vocab_size": vocab_size}  # multimodal: the text model's
        else:
            merged["vocab_size"] = vocab_size
    (out / "config.json").write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")


def write_tokenizer(out: Path, built, template: str | None, config: MergeConfig, donor: Path, copy: bool) -> None:
    """The output tokenizer as mergekit writes it (§10.5): a built one saved with the chat
    template; else, when a chat template is configured, the donor's re-saved with it; else the
    donor's files copied (with --copy-tokenizer)."""
    if built is not None:
        save_tokenizer(built, template, out)
    elif config.chat_template is not None:
        if not copy:
            log.warning("chat_template is not saved: --no-copy-tokenizer writes no tokenizer")
            return
        try:
            donor_tokenizer = load_tokenizer(donor, str(donor))
        except MergeflowError as err:  # as in mergekit, the merge itself still succeeds
            log.warning("chat_template is not saved: %s", err)
            return
        save_tokenizer(donor_tokenizer, template, out)
    elif copy:
        copy_tokenizer(donor, out)


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


def merge_card(title: str, config: MergeConfig, method: MethodSpec) -> str:
    """The merge's README.md: it depends on the config alone, so it is rendered while the merge runs."""
    from mergeflow.engine.card import CardContent, render

    refs = config.referenced_models()
    base = config.base_model if method.requires_base else None
    sides = [side for r in refs for side in (r.base, r.lora) if side is not None]
    name = method.pretty_name or method.name
    method_line = f"[{name}]({method.reference_url})" if method.reference_url else name
    sentence = f"This model was merged with the {method_line} merge method"
    sentence += f", with {markdown_model(base)} as the base model." if base is not None else "."
    # SLERP interpolates between its two models, the base being one end: both were merged.
    merged = [r for r in refs if r != base or method.name == "slerp"]
    details = "\n".join([
        "This is a merge of pre-trained language models created with "
        "[mergeflow](https://github.com/mergeflow/mergeflow), whose engine reproduces mergekit 0.1.5 bit for bit.",
        "", "### Merge Method", "", sentence,
        "", "### Models Merged", "", "The following models were included in the merge:",
        *[f"* {markdown_model(r)}" for r in merged],
    ])
    configuration = "\n".join(["The following YAML configuration was used to produce this model:", "",
                                "```yaml", config.text.rstrip(), "```"])
    content = CardContent(
        title=title,
        base_models=[side.path for side in dict.fromkeys(sides) if is_hub_reference(side)],
        sections=[("Merge Details", details), ("Configuration", configuration)],
        licenses=[_local_license(r) for r in refs],
        usage_repo=title,
    )
    return render(content)


def _local_license(ref: ModelRef) -> str | None:
    """The licence in a local input's model card, if it has one (Hub inputs' cards are not fetched)."""
    card = Path(ref.path) / "README.md"
    if is_hub_reference(ref) or not card.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(card, ignore_metadata_errors=True).data.license
    except Exception:  # an unreadable card claims no licence
        return None


def markdown_model(ref: ModelRef) -> str:
    if ref.lora:
        return f"{markdown_model(ref.base)} + {markdown_model(ref.lora)}"
    if not is_hub_reference(ref):
        return str(ref)
    url = f"https://huggingface.co/{ref.path}" + (f"/tree/{ref.revision}" if ref.revision else "")
    return f"[{ref}]({url})"


def write_provenance(out: Path, record: dict) -> None:
    (out / PROVENANCE_FILE).write_text(json.dumps({"mergeflow_version": __version__, **record}, indent=2) + "\n")
