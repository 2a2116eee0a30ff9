"""The inputs of a published merge, pinned to the commits its publisher most likely used.

An explicit ``@revision`` in the config wins. Otherwise the input's commit is the last one on its
default branch at or before the publication date (or ``--inputs-as-of``): a publisher merges what
the Hub held then, and an input changed afterwards must not change the reproduction. This is a
heuristic (a publisher may have used an older cached copy), so the commits that lie near the date
are kept for the diagnosis.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from mergeflow.engine.errors import MergeflowError
from mergeflow.pipeline.recipes import HUB_RE, parse_ref, ref_slots
from mergeflow.verify.sides import VerifyError, hub_failure

NEAR = timedelta(days=30)  # commits this close to the publication are listed as alternatives


@dataclass
class PinnedInput:
    repo: str
    commit: str
    date: str  # the commit's date, ISO 8601
    rule: str  # how the commit was chosen, in words
    explicit: bool
    near: list[dict] = field(default_factory=list)  # other commits near the date: {commit, date}

    @property
    def reference(self) -> str:
        return f"{self.repo}@{self.commit}"

    def as_dict(self) -> dict:
        return asdict(self)


def parse_date(text: str) -> datetime:
    """``YYYY-MM-DD`` (the end of that day, UTC) or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise VerifyError(f"--inputs-as-of: {text!r} is not a date (YYYY-MM-DD or ISO 8601)") from None
    if len(text) == 10:
        value += timedelta(days=1, microseconds=-1)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def commit_date(repo: str, revision: str) -> tuple[str, datetime]:
    """The commit a revision names, and its date (the newest entry of the history at it)."""
    from huggingface_hub import list_repo_commits

    try:
        newest = list_repo_commits(repo, revision=revision)[0]
    except Exception as err:
        raise hub_failure(f"{repo}@{revision}", err) from None
    return newest.commit_id, newest.created_at


def config_references(doc: dict, where: str) -> list[tuple[dict, str, str, str | None]]:
    """Every model reference of a mergekit config: (holder, key, repo, revision)."""
    found = []
    for holder, key, slot in ref_slots(doc):
        try:
            path, revision = parse_ref(holder[key], f"{where}: {slot}")
        except MergeflowError as err:
            raise VerifyError(str(err)) from None
        found.append((holder, key, path, revision))
    return found


def pin_inputs(doc: dict, where: str, as_of: datetime, published: datetime,
               skip: set[str] = frozenset()) -> dict[tuple[str, str | None], PinnedInput]:
    """The commit of every Hub input of ``doc`` at ``as_of`` (names in ``skip`` are earlier recipe
    steps); the alternatives kept are the commits next to the chosen one and those near ``published``."""
    pinned: dict[tuple[str, str | None], PinnedInput] = {}
    for _, _, repo, revision in config_references(doc, where):
        if repo in skip or (repo, revision) in pinned:
            continue
        if not HUB_RE.match(repo):
            raise VerifyError(f"{where}: {repo!r} is a local path, not a Hub repo: it cannot be fetched to reproduce the merge")
        pinned[(repo, revision)] = _pin(repo, revision, as_of, published)
    return pinned


def _pin(repo: str, revision: str | None, as_of: datetime, published: datetime) -> PinnedInput:
    from huggingface_hub import list_repo_commits

    if revision is not None:
        commit, date = commit_date(repo, revision)
        return PinnedInput(repo, commit, date.isoformat(), f"explicit revision {revision}", True)
    try:
        history = list_repo_commits(repo)
    except Exception as err:
        raise hub_failure(repo, err) from None
    before = [c for c in history if c.created_at <= as_of]
    if not before:
        raise VerifyError(f"{repo}: no commit at or before {as_of.isoformat()} (its first is from "
                          f"{history[-1].created_at.isoformat()}); pass --inputs-as-of")
    chosen = before[0]
    at = history.index(chosen)
    neighbours = {c.commit_id for c in history[max(at - 1, 0) : at + 2]}
    near = [{"commit": c.commit_id, "date": c.created_at.isoformat()} for c in history
            if c.commit_id != chosen.commit_id and (c.commit_id in neighbours or abs(c.created_at - published) <= NEAR)]
    rule = f"last commit at or before {as_of.isoformat()}"
    if len(history) > len(before):
        rule += f" ({len(history) - len(before)} newer not used)"
    return PinnedInput(repo, chosen.commit_id, chosen.created_at.isoformat(), rule, False, near)


def pinned_config(doc: dict, where: str, pinned: dict[tuple[str, str | None], PinnedInput],
                  steps: dict[str, str] | None = None) -> str:
    """``doc`` with each Hub reference rewritten to ``repo@commit`` (and each earlier step to the
    directory it was built in), as YAML the engine runs."""
    doc = copy.deepcopy(doc)
    for holder, key, repo, revision in config_references(doc, where):
        if steps and repo in steps:
            holder[key] = steps[repo]
        else:
            holder[key] = pinned[(repo, revision)].reference
    return yaml.safe_dump(doc, sort_keys=False)


def header_checkpoints(config_text: str):
    """Each input's config.json and safetensors headers from the Hub: what planning needs, and no
    weight bytes (headers are read with HTTP range requests)."""
    import json

    from huggingface_hub import HfApi, hf_hub_download

    from mergeflow.engine.checkpoint import SAFETENSORS_DTYPES, Checkpoint
    from mergeflow.engine.config import parse_config

    config = parse_config(config_text)
    checkpoints = {}
    for ref in config.referenced_models():
        if Path(ref.path).exists():  # an earlier recipe step, already built locally
            checkpoints[ref] = Checkpoint(Path(ref.path), str(ref))
            continue
        try:
            with open(hf_hub_download(ref.path, "config.json", revision=ref.revision)) as handle:
                model_config = json.load(handle)
            metadata = HfApi().get_safetensors_metadata(ref.path, revision=ref.revision)
        except Exception as err:
            raise hub_failure(f"pre-flight of {ref}", err) from None
        headers = {}
        for file_metadata in metadata.files_metadata.values():
            for name, tensor in file_metadata.tensors.items():
                if tensor.dtype not in SAFETENSORS_DTYPES:
                    raise VerifyError(f"{ref}: tensor {name} has unsupported dtype {tensor.dtype}")
                headers[name] = (SAFETENSORS_DTYPES[tensor.dtype], tuple(tensor.shape))
        checkpoints[ref] = Checkpoint.from_headers(str(ref), model_config, headers)
    return config, checkpoints
