"""``chat_template:``: ``auto``, a built-in name, or a literal Jinja template (mergekit-semantics §10.6).

The built-in templates are ours (the ``*.jinja`` files here); each renders conversations exactly as
mergekit 0.1.5's template of the same name does, so a merge that names one reproduces.
"""

from __future__ import annotations

import logging
from collections import Counter
from importlib import resources
from typing import Callable, Iterable

from mergeflow.engine.errors import ConfigError

log = logging.getLogger("mergeflow")

BUILT_IN = ("alpaca", "chatml", "exaone", "llama3", "mistral")


def _looks_like_name(value: str) -> bool:
    """mergekit looks a value up as a name only when it is short, one line and has no ``{``."""
    return len(value) < 256 and "\n" not in value and "{" not in value


def check_chat_template(value: str) -> None:
    """Refuse what mergekit would refuse after the merge (§10.6), before any weight is read."""
    if value == "auto" or (_looks_like_name(value) and value in BUILT_IN):
        return
    if _looks_like_name(value) and len(value) < 20:
        raise ConfigError("chat_template", f"unknown template name {value!r}; use 'auto', one of {', '.join(BUILT_IN)}, or a Jinja template")
    if len(value) < 20 or "{" not in value:
        raise ConfigError("chat_template", "a literal template must be Jinja with at least 20 characters and a '{'")
    try:
        import jinja2
    except ImportError:  # transformers, which applies templates, brings jinja2; without it, skip the check
        return
    try:
        jinja2.Environment().parse(value)
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError("chat_template", f"not a valid Jinja template (line {err.lineno}: {err.message})") from None


def built_in(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.jinja").read_text()


def resolve_chat_template(value: str, templates_of_models: Callable[[], Iterable[str | dict | None]]) -> str | None:
    """The template text to save; None for ``auto`` when no input model has one.

    ``auto`` takes the most common (stripped) template among the input models; a tie goes to the
    model listed first, where mergekit's pick follows Python set order.
    """
    if value == "auto":
        found = []
        for template in templates_of_models():
            if isinstance(template, dict):
                template = template.get("default")
            if template:
                found.append(template.strip())
        if not found:
            log.warning("chat_template: auto found no chat template in the input models; keeping the tokenizer's own")
            return None
        return Counter(found).most_common(1)[0][0]
    if _looks_like_name(value) and value in BUILT_IN:
        return built_in(value)
    return value
