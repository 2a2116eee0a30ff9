"""Parse and validate a mergekit-yaml merge config (mergekit-semantics §2).

mergekit ignores unknown keys silently; we accept the same documents but warn about unknown keys,
and give keys users commonly get wrong (from tutorials) an error that says what to write instead.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from mergeflow.engine.errors import ConfigError

log = logging.getLogger("mergeflow")

DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64,
}

TOP_LEVEL_KEYS = {
    "merge_method", "models", "slices", "modules", "base_model", "parameters", "dtype", "out_dtype",
    "tokenizer_source", "tokenizer", "chat_template",
}
MOE_KEYS = {"experts", "gate_mode", "experts_per_token", "shared_experts"}
TOKENIZER_SOURCES = ("union", "base")


@dataclass(frozen=True)
class ModelRef:
    """A model as the config names it: a local path or a Hub repo, optionally at a revision, and
    optionally a PEFT LoRA adapter (itself a path or repo at a revision) applied on top."""

    path: str
    revision: str | None = None
    lora: ModelRef | None = None

    @property
    def base(self) -> ModelRef:
        """The model without its adapter."""
        return ModelRef(self.path, self.revision)

    def __str__(self) -> str:
        text = f"{self.path}@{self.revision}" if self.revision else self.path
        return f"{text}+{self.lora}" if self.lora else text


@dataclass(frozen=True)
class Source:
    """One input of an output slice; ``layer_range`` is None for ``models:`` syntax."""

    model: ModelRef
    layer_range: tuple[int, int] | None
    parameters: dict[str, Any]
    key: str  # where it sits in the config, for messages


@dataclass(frozen=True)
class OutputSlice:
    sources: tuple[Source, ...]
    base_model: ModelRef | None
    parameters: dict[str, Any]
    key: str


@dataclass(frozen=True)
class TokenSource:
    """Where one configured token's embedding row comes from (``tokenizer.tokens.<tok>.source``).

    ``kind`` is "model" (that model's row for the same token), "model_token" (a model's row for
    ``token`` or ``token_id``) or "zero".
    """

    kind: str
    model: ModelRef | None = None
    token: str | None = None
    token_id: int | None = None


@dataclass(frozen=True)
class TokenSettings:
    source: TokenSource | None
    force: bool


@dataclass(frozen=True)
class TokenizerSettings:
    """``tokenizer_source:`` or the ``tokenizer:`` block: which vocabulary the output has."""

    source: str | ModelRef  # "union", "base" or a model
    tokens: dict[str, TokenSettings] = field(default_factory=dict)
    pad_to_multiple_of: int | None = None


@dataclass
class MergeConfig:
    merge_method: str
    text: str
    models: list[Source] | None = None
    slices: list[OutputSlice] | None = None
    base_model: ModelRef | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    module_parameters: dict[str, Any] = field(default_factory=dict)
    dtype: torch.dtype | None = None
    out_dtype: torch.dtype | None = None
    tokenizer: TokenizerSettings | None = None
    chat_template: str | None = None

    def referenced_models(self) -> list[ModelRef]:
        """Every model in config order (sources first, then bases), without repeats."""
        refs: list[ModelRef] = []
        sources = self.models or [s for sl in self.slices or [] for s in sl.sources]
        candidates = [s.model for s in sources] + [self.base_model]
        candidates += [sl.base_model for sl in self.slices or []]
        for ref in candidates:
            if ref is not None and ref not in refs:
                refs.append(ref)
        return refs

    @property
    def canonical_sha256(self) -> str:
        """Hash of the parsed document, so formatting and comments do not change it."""
        canonical = json.dumps(_json_keys(yaml.safe_load(self.text)), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _json_keys(node: Any) -> Any:
    """YAML allows non-string keys (``1: x``); JSON, and sorting them beside strings, does not."""
    if isinstance(node, dict):
        return {k if isinstance(k, str) else str(k): _json_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_json_keys(v) for v in node]
    return node


def parse_config(text: str) -> MergeConfig:
    return _parse_document(load_yaml_mapping(text, "merge config"), text)


def load_yaml_mapping(text: str, what: str) -> dict:
    """The YAML document of a config (``what`` names it in errors), which must be a mapping."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError("", f"{what} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(doc, dict):
        raise ConfigError("", f"{what} must be a YAML mapping")
    return doc


def _parse_document(doc: dict, text: str) -> MergeConfig:
    moe_keys = sorted(MOE_KEYS & doc.keys())
    if doc.get("merge_method") == "moe" or moe_keys:
        # MoE configs have no merge method of their own: name what makes this one a MoE config.
        found = ", ".join(f"'{k}'" for k in moe_keys) or "'merge_method: moe'"
        raise ConfigError("", f"this is a mergekit-moe config (it has {found}); build it with 'mergeflow moe CONFIG OUT', not 'mergeflow merge'")
    _refuse_unsupported(doc)
    warn_unknown(doc, TOP_LEVEL_KEYS, "")
    method = doc.get("merge_method")
    if not isinstance(method, str) or not method:
        raise ConfigError("merge_method", f"required, a method name (got {method!r})")
    syntaxes = [k for k in ("models", "slices", "modules") if doc.get(k) is not None]
    if len(syntaxes) != 1:
        raise ConfigError(
            "models", f"exactly one of 'models', 'slices' or 'modules' must be present (found {syntaxes or 'none'})"
        )
    config = MergeConfig(
        merge_method=method,
        text=text,
        base_model=model_ref(doc["base_model"], "base_model") if doc.get("base_model") is not None else None,
        parameters=_parameters(doc.get("parameters"), "parameters"),
        dtype=parse_dtype(doc.get("dtype"), "dtype"),
        out_dtype=parse_dtype(doc.get("out_dtype"), "out_dtype"),
        tokenizer=_tokenizer(doc),
        chat_template=_chat_template(doc.get("chat_template")),
    )
    body, prefix = doc, ""
    if "modules" in syntaxes:
        body, prefix = _single_module(doc["modules"])
        config.module_parameters = _parameters(body.get("parameters"), f"{prefix}parameters")
    if body.get("models") is not None and body.get("slices") is not None:
        raise ConfigError(prefix.rstrip("."), "a module must have exactly one of 'slices' or 'models'")
    if body.get("models") is not None:
        config.models = [_source(item, f"{prefix}models[{i}]", False) for i, item in enumerate(_list(body, "models", prefix))]
    elif body.get("slices") is not None:
        config.slices = [_slice(item, f"{prefix}slices[{i}]") for i, item in enumerate(_list(body, "slices", prefix))]
    else:
        raise ConfigError(prefix.rstrip("."), "a module must have exactly one of 'slices' or 'models'")
    return config


def _unsupported(doc: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (key path, feature) in ``doc`` that mergeflow cannot merge yet, so one message can
    name them all instead of the user fixing them one run at a time."""
    found: list[tuple[str, str]] = []
    if isinstance(doc, dict):
        if path == "" and isinstance(doc.get("modules"), dict) and set(doc["modules"]) != {"default"}:
            found.append(("modules", "multi-module configs (anything but the single module 'default')"))
        for key, value in doc.items():
            at = f"{path}.{key}" if path else str(key)
            if key == "override_architecture" and value:
                found.append((at, "override_architecture"))
            if key != "parameters":
                found += _unsupported(value, at)
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            found += _unsupported(item, f"{path}[{i}]")
    return found


def _refuse_unsupported(doc: dict) -> None:
    found = list(dict.fromkeys(_unsupported(doc)))
    if len(found) == 1:
        key, what = found[0]
        raise ConfigError(key, f"{what} {'is' if what == 'override_architecture' else 'are'} not supported yet")
    if found:
        listing = "; ".join(f"{key}: {what}" for key, what in found)
        raise ConfigError("", f"this config uses {len(found)} things mergeflow does not support yet: {listing}")


def _tokenizer(doc: dict) -> TokenizerSettings | None:
    """``tokenizer_source`` (legacy) or ``tokenizer:`` (mergekit-semantics §2.1, §9.2)."""
    legacy, block = doc.get("tokenizer_source"), doc.get("tokenizer")
    if legacy is not None and block is not None:
        raise ConfigError("tokenizer", "cannot be combined with 'tokenizer_source'; keep one ('tokenizer: {source: ...}' is the current form)")
    if legacy is not None:
        return TokenizerSettings(_tokenizer_source(legacy, "tokenizer_source"))
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ConfigError("tokenizer", f"must be a mapping with 'source', 'tokens' and/or 'pad_to_multiple_of' (got {block!r})")
    warn_unknown(block, {"source", "tokens", "pad_to_multiple_of"}, "tokenizer.")
    tokens = block.get("tokens") or {}
    if not isinstance(tokens, dict):
        raise ConfigError("tokenizer.tokens", f"must map token strings to {{source, force}} (got {tokens!r})")
    pad = block.get("pad_to_multiple_of")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 0):
        raise ConfigError("tokenizer.pad_to_multiple_of", f"expected a positive integer (got {pad!r})")
    return TokenizerSettings(
        source=_tokenizer_source(block.get("source", "union"), "tokenizer.source"),
        tokens={str(tok): _token_settings(spec, f"tokenizer.tokens.{tok}") for tok, spec in tokens.items()},
        pad_to_multiple_of=pad or None,
    )


def _tokenizer_source(value: Any, key: str) -> str | ModelRef:
    if value in TOKENIZER_SOURCES:
        return value
    if value is None:
        raise ConfigError(key, "expected 'union', 'base' or a model reference (got null)")
    return model_ref(value, key)


def _token_settings(spec: Any, key: str) -> TokenSettings:
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ConfigError(key, f"expected a mapping with 'source' and/or 'force' (got {spec!r})")
    warn_unknown(spec, {"source", "force"}, f"{key}.")
    force = spec.get("force", False)
    if not isinstance(force, bool):
        raise ConfigError(f"{key}.force", f"expected true or false (got {force!r})")
    return TokenSettings(_token_source(spec.get("source"), f"{key}.source"), force)


def _token_source(value: Any, key: str) -> TokenSource | None:
    if value is None:
        return None
    if isinstance(value, dict) and "kind" in value:
        kind = value["kind"]
        if kind == "zero":
            warn_unknown(value, {"kind"}, f"{key}.")
            return TokenSource("zero")
        if kind != "model_token":
            raise ConfigError(f"{key}.kind", f"expected 'model_token' or 'zero' (got {kind!r})")
        warn_unknown(value, {"kind", "model", "token", "token_id"}, f"{key}.")
        if "model" not in value:
            raise ConfigError(key, "a model_token source needs 'model'")
        token, token_id = value.get("token"), value.get("token_id")
        if (token is None) == (token_id is None):
            raise ConfigError(key, "a model_token source needs exactly one of 'token' and 'token_id'")
        if token_id is not None and (isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0):
            raise ConfigError(f"{key}.token_id", f"expected a non-negative integer (got {token_id!r})")
        if token is not None and not isinstance(token, str):
            raise ConfigError(f"{key}.token", f"expected a token string (got {token!r})")
        return TokenSource("model_token", model_ref(value["model"], f"{key}.model"), token, token_id)
    return TokenSource("model", model_ref(value, key))


def _chat_template(value: Any) -> str | None:
    if value is None:
        return None
    from mergeflow.engine.chat_templates import check_chat_template

    if not isinstance(value, str):
        raise ConfigError("chat_template", f"expected 'auto', a built-in name or a Jinja template (got {value!r})")
    check_chat_template(value)
    return value


def _single_module(modules: Any) -> tuple[dict, str]:
    if not isinstance(modules, dict) or set(modules) != {"default"} or not isinstance(modules["default"], dict):
        raise ConfigError("modules", "only the single module 'default' is supported (multi-module architectures are not)")
    warn_unknown(modules["default"], {"models", "slices", "parameters"}, "modules.default.")
    return modules["default"], "modules.default."


def _list(body: dict, key: str, prefix: str) -> list:
    value = body[key]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{prefix}{key}", f"must be a non-empty list (got {value!r})")
    return value


def _slice(item: Any, key: str) -> OutputSlice:
    if not isinstance(item, dict):
        raise ConfigError(key, f"must be a mapping with 'sources' (got {item!r})")
    warn_unknown(item, {"sources", "base_model", "parameters", "residual_weight"}, f"{key}.")
    sources = item.get("sources")
    if not isinstance(sources, list) or not sources:
        raise ConfigError(f"{key}.sources", f"must be a non-empty list (got {sources!r})")
    parsed = tuple(_source(s, f"{key}.sources[{j}]", True) for j, s in enumerate(sources))
    counts = {s.layer_range[1] - s.layer_range[0] for s in parsed}
    if len(counts) > 1:
        raise ConfigError(f"{key}.sources", f"all inputs to a slice must contain the same number of layers (got {sorted(counts)})")
    base = item.get("base_model")
    return OutputSlice(
        sources=parsed,
        base_model=model_ref(base, f"{key}.base_model") if base is not None else None,
        parameters=_parameters(item.get("parameters"), f"{key}.parameters"),
        key=key,
    )


def _source(item: Any, key: str, needs_range: bool) -> Source:
    if not isinstance(item, dict) or "model" not in item:
        raise ConfigError(key, f"must be a mapping with a 'model' key (got {item!r})")
    allowed = {"model", "parameters"} | ({"layer_range"} if needs_range else set())
    warn_unknown(item, allowed, f"{key}.")
    layer_range = None
    if needs_range:
        layer_range = _layer_range(item.get("layer_range"), f"{key}.layer_range")
    return Source(
        model=model_ref(item["model"], f"{key}.model"),
        layer_range=layer_range,
        parameters=_parameters(item.get("parameters"), f"{key}.parameters"),
        key=key,
    )


def _layer_range(value: Any, key: str) -> tuple[int, int]:
    ok = (
        isinstance(value, list) and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] < value[1]
    )
    if not ok:
        raise ConfigError(key, f"expected [start, end] with 0 <= start < end (got {value!r})")
    return (value[0], value[1])


def model_ref(value: Any, key: str) -> ModelRef:
    """A model reference in mergekit's forms (§2.2): ``PATH[@REV][+LORA[@REV]]``, or
    ``{model: PATH | {path, revision}, lora: ..., override_architecture: ...}``, or ``{path, revision}``."""
    if isinstance(value, dict) and "model" in value:
        warn_unknown(value, {"model", "lora", "override_architecture"}, f"{key}.")
        if value.get("override_architecture"):
            raise ConfigError(f"{key}.override_architecture", "is not supported yet")
        model = _model_path(value["model"], f"{key}.model")
        lora = _model_path(value["lora"], f"{key}.lora") if value.get("lora") is not None else None
        return ModelRef(model.path, model.revision, lora)
    if isinstance(value, str):
        if _is_local_dir(value):  # a directory named ``x@y`` or ``a+b`` is that directory
            return ModelRef(value, None)
        parts = value.split("+")
        if len(parts) > 2:
            raise ConfigError(key, f"expected MODEL or MODEL+LORA, with at most one '+' (got {value!r})")
        model = _model_path(parts[0], key)
        lora = _model_path(parts[1], key) if len(parts) == 2 else None
        return ModelRef(model.path, model.revision, lora)
    return _model_path(value, key)


def _model_path(value: Any, key: str) -> ModelRef:
    """One path or Hub repo, optionally at a revision: ``PATH[@REV]`` or ``{path, revision}``."""
    if isinstance(value, dict):
        if isinstance(value.get("path"), str) and value["path"]:
            warn_unknown(value, {"path", "revision"}, f"{key}.")
            revision = value.get("revision")
            return ModelRef(value["path"], str(revision) if revision is not None else None)
        raise ConfigError(key, f"expected a model path or {{path, revision}} (got {value!r})")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"expected a model path or Hub repo (got {value!r})")
    if _is_local_dir(value):
        return ModelRef(value, None)
    path, sep, revision = value.partition("@")
    if "@" in revision or (sep and not revision) or not path:
        raise ConfigError(key, f"expected PATH or PATH@REVISION (got {value!r})")
    return ModelRef(path, revision or None)


def _is_local_dir(value: str) -> bool:
    """An existing directory: its name is taken whole, never split at '@' or '+' (staging and
    cluster paths often hold them, e.g. ``/scratch/user@lab``)."""
    return Path(value).expanduser().is_dir()


def parse_dtype(value: Any, key: str) -> torch.dtype | None:
    if value is None:
        return None
    name = value.removeprefix("torch.") if isinstance(value, str) else value
    if not isinstance(name, str) or name not in DTYPES:
        raise ConfigError(key, f"unknown dtype {value!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _parameters(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"must be a mapping of parameter names to values (got {value!r})")
    odd = next((name for name in value if not isinstance(name, str)), None)
    if odd is not None:
        raise ConfigError(f"{key}.{odd}", f"a parameter name must be a string (got {odd!r})")
    if "dare" in value:
        raise ConfigError(f"{key}.dare", _dare_message(value))
    return {name: _setting(setting, f"{key}.{name}") for name, setting in value.items()}


def _dare_message(parameters: dict) -> str:
    """Tutorials write ``dare: {drop_rate: 0.9}``; mergekit ignores it, so the merge would run at
    whatever ``density`` says. Translate the drop rate and point out a conflicting density."""
    drop = parameters["dare"].get("drop_rate") if isinstance(parameters["dare"], dict) else None
    if isinstance(drop, (int, float)) and not isinstance(drop, bool):
        meaning = f"drop_rate {drop} means density: {round(1 - drop, 6):g}"
    else:
        meaning = "drop_rate 0.9 means density: 0.1"
    density = parameters.get("density")
    conflict = f", which conflicts with the density: {density} beside it" if density is not None else ""
    return (
        "is not a mergekit key (mergekit would silently ignore it). DARE's keep probability is "
        f"'density' ({meaning}{conflict}): delete 'dare:' and set density instead"
    )


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _setting(value: Any, key: str) -> Any:
    """Check the shape of a setting: scalar, gradient list, or (list of) ``{filter?, value}``."""
    if _is_scalar(value):
        return value
    if isinstance(value, dict):
        return [_conditional(value, key)]
    if isinstance(value, list) and value:
        if all(_is_scalar(v) for v in value):
            return value
        if all(isinstance(v, dict) for v in value):
            return [_conditional(v, f"{key}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(
        key, f"expected a value, a gradient list, or a list of {{filter, value}} entries (got {value!r})"
    )


def _conditional(value: dict, key: str) -> dict:
    if "value" not in value or set(value) - {"filter", "value"}:
        raise ConfigError(key, f"a conditional parameter needs exactly 'value' and an optional 'filter' (got {value!r})")
    inner = value["value"]
    if not (_is_scalar(inner) or (isinstance(inner, list) and inner and all(_is_scalar(v) for v in inner))):
        raise ConfigError(f"{key}.value", f"expected a value or a gradient list (got {inner!r})")
    if value.get("filter") is not None and not isinstance(value["filter"], str):
        raise ConfigError(f"{key}.filter", f"expected a string (got {value['filter']!r})")
    return {"filter": value.get("filter"), "value": inner}


def did_you_mean(name: str, known) -> str:
    """`` (did you mean 'x'?)`` for a name one typo away from a known one, else ``""``."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def warn_unknown(mapping: dict, known: set[str], prefix: str) -> None:
    unknown = sorted(str(k) for k in mapping if k not in known)
    if unknown:
        log.warning("ignoring unknown config key(s): %s", ", ".join(prefix + k + did_you_mean(k, known) for k in unknown))
