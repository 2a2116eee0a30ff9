"""The model card of a MoE build (mergekit-moe writes none; every mergeflow output has one)."""

from __future__ import annotations

from pathlib import Path

import yaml

from mergeflow.engine.outputs import markdown_model, is_hub_reference
from mergeflow.moe.config import Expert, MoEConfig


def write_moe_card(out: Path, title: str, config: MoEConfig, architecture: str) -> None:
    hub_models = [str(r) for r in config.referenced_models() if is_hub_reference(r)]
    front = yaml.dump({"base_model": hub_models, "library_name": "transformers", "tags": ["mergekit", "moe", "mergeflow"]})
    lines = [
        "---", front.rstrip(), "---", f"# {title}", "",
        "This is a mixture of experts built from pre-trained language models with "
        "[mergeflow](https://github.com/mergeflow/mergeflow), whose `mergeflow moe` reproduces mergekit-moe 0.1.5 bit for bit.",
        "", "## MoE Details", "",
        f"A {architecture} model: the base model {markdown_model(config.base_model)} donates attention, embeddings, "
        f"norms and tokenizer; each layer routes every token to {config.experts_per_token} of "
        f"{len(config.experts)} experts, with routers initialised by gate mode `{config.gate_mode}`.",
        "", "### Experts", "", *[_expert_line(e) for e in config.experts],
    ]
    if config.shared_experts:
        lines += ["", "### Shared experts", "", *[_expert_line(e) for e in config.shared_experts]]
    lines += [
        "", "### Configuration", "", "The following YAML configuration was used to produce this model:", "",
        "```yaml", config.text.rstrip(), "```", "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def _expert_line(expert: Expert) -> str:
    prompts = f" (prompts: {', '.join(repr(p) for p in expert.positive_prompts)})" if expert.positive_prompts else ""
    return f"* {markdown_model(expert.source_model)}{prompts}"
