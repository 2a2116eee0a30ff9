"""Model cards as the Hub reads them: metadata from huggingface_hub's ``ModelCardData``.

Both the engine's card (``mergeflow merge``) and the upload card (``mergeflow upload``) come from
here, so their metadata agrees: ``base_model`` lists plain repo ids (the Hub links them as the
model tree; revisions go in the lineage, not there), ``base_model_relation: merge``, the ``merge``
and ``mergekit`` tags, a licence only when every parent with one agrees, and evaluation results as
``model-index``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CardContent:
    title: str
    base_models: list[str]  # plain Hub repo ids (no @revision)
    sections: list[tuple[str, str]]  # (heading, markdown body), in order
    licenses: list[str | None] = field(default_factory=list)  # each parent's licence, None if unknown
    eval_results: list[dict] = field(default_factory=list)  # {task, metric, value}
    usage_repo: str | None = None  # the repo id the usage snippet loads


def agreed_license(licenses: list[str | None]) -> str | None:
    """The licence all parents declare, else None (a card must not claim what parents don't)."""
    found = set(licenses)
    return found.pop() if len(found) == 1 and None not in found else None


def render(content: CardContent) -> str:
    """The card's text: ``ModelCardData``'s YAML between ``---`` lines, then the markdown body,
    the layout ``ModelCard`` reads and writes. ``ModelCard`` itself is not needed to write it, and
    importing it (with the Hub client it pushes cards with) cost every merge 0.27 s of CPU on our
    2-core machine."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(task_type="text-generation", dataset_type=r["task"], dataset_name=r["task"],
                   metric_type=r["metric"], metric_name=r["metric"], metric_value=r["value"],
                   source_name="lm-evaluation-harness", source_url="https://github.com/EleutherAI/lm-evaluation-harness")
        for r in content.eval_results
    ]
    data = ModelCardData(
        base_model=list(dict.fromkeys(content.base_models)) or None,
        library_name="transformers",
        license=agreed_license(content.licenses),
        tags=["merge", "mergekit", "mergeflow"],
        model_name=content.title if results else None,
        eval_results=results or None,
        base_model_relation="merge",
    )
    body = [f"# {content.title}", ""]
    for heading, text in content.sections:
        body += [f"## {heading}", "", text.rstrip(), ""]
    if content.usage_repo:
        body += ["## Usage", "", usage_snippet(content.usage_repo), ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


def usage_snippet(repo: str) -> str:
    return (
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n'
        f'model = AutoModelForCausalLM.from_pretrained("{repo}")\n'
        "```"
    )
