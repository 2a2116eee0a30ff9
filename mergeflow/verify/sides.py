"""One side of a comparison: a local model directory or a Hub repo at a revision.

A side knows, before reading any weight, which weight files it has with their sha256 (the Hub's
LFS hash, or a local file's hash) and each tensor's dtype, shape and file (local headers, or the
Hub's safetensors headers read with HTTP range requests). Weights are read one tensor at a time,
and from the Hub only the shards that hash-equality could not settle are downloaded, each one
checked against its LFS sha256 after download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from mergeflow.engine.checkpoint import SAFETENSORS_DTYPES, Checkpoint
from mergeflow.engine.errors import MergeflowError
from mergeflow.engine.references import file_sha256
from mergeflow.pipeline.recipes import HUB_RE, parse_ref


class VerifyError(MergeflowError):
    """Bad input to verify or reproduce: a missing model, an unknown repo or revision."""


def hub_failure(what: str, err: Exception) -> VerifyError:
    """One line for any huggingface_hub failure (it raises many types); never echoes the token."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return VerifyError(f"{what}: {type(err).__name__}: {first}")


@dataclass
class Side:
    label: str  # what the user named, with the commit for Hub sides
    files: dict[str, str | None]  # weight file -> sha256 (None: not known without reading it)
    tensors: dict[str, tuple[torch.dtype, tuple[int, ...], str]]  # name -> dtype, shape, file
    repo: str | None = None
    commit: str | None = None
    local: Path | None = None
    _checkpoint: Checkpoint | None = field(default=None, repr=False)
    _downloaded: dict[str, Path] = field(default_factory=dict, repr=False)

    def sha256(self, file: str) -> str | None:
        """The file's sha256: the Hub's LFS hash, or a local file's hash (computed once, on demand)."""
        if self.files.get(file) is None and self.local is not None and self.repo is None:
            self.files[file] = file_sha256(self.local / file)
        return self.files.get(file)

    def load(self, name: str) -> torch.Tensor:
        if self._checkpoint is not None:
            return self._checkpoint.load(name)
        file = self._tensor_file(name)
        with safe_open(str(file), framework="pt") as handle:
            return handle.get_tensor(name)

    def _tensor_file(self, name: str) -> Path:
        shard = self.tensors[name][2]
        if shard not in self._downloaded:
            self._downloaded[shard] = download_verified(self.repo, self.commit, shard, self.files[shard])
        return self._downloaded[shard]


def open_side(reference: str) -> Side:
    """A local directory when one exists at ``reference``, else a Hub ``org/name[@rev]``."""
    if Path(reference).expanduser().is_dir():
        return local_side(Path(reference).expanduser())
    try:
        repo, revision = parse_ref(reference, "model")
    except MergeflowError as err:
        raise VerifyError(str(err)) from None
    if not HUB_RE.match(repo):
        raise VerifyError(f"{reference}: not a local model directory and not a Hub reference ORG/NAME[@REV]")
    return hub_side(repo, revision)


def local_side(path: Path) -> Side:
    checkpoint = Checkpoint(path.resolve(), str(path))
    files = {f.name: None for f in checkpoint.files}  # hashed on demand: see Side.sha256
    tensors = {name: (dtype, shape, checkpoint.file_of(name).name) for name, (dtype, shape) in checkpoint.headers.items()}
    return Side(str(path), files, tensors, local=path.resolve(), _checkpoint=checkpoint)


def hub_side(repo: str, revision: str | None) -> Side:
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True)
    except Exception as err:
        raise hub_failure(f"{repo}@{revision or 'main'}", err) from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    label = f"{repo}@{info.sha}"
    shards = {n: (s.lfs.sha256 if s.lfs else None) for n, s in siblings.items() if n.endswith(".safetensors")}
    if not shards:
        if any(n.endswith(".bin") for n in siblings):  # pickles: no remote headers, so read them all
            return _downloaded_side(repo, info.sha, label)
        raise VerifyError(f"{label}: the repo has no model weights (*.safetensors)")
    try:
        metadata = api.get_safetensors_metadata(repo, revision=info.sha)
    except Exception as err:
        raise hub_failure(f"{label}: cannot read the safetensors headers", err) from None
    tensors = {}
    for shard, file_metadata in metadata.files_metadata.items():
        for name, tensor in file_metadata.tensors.items():
            if tensor.dtype not in SAFETENSORS_DTYPES:
                raise VerifyError(f"{label}: {shard}: tensor {name} has unsupported dtype {tensor.dtype}")
            tensors[name] = (SAFETENSORS_DTYPES[tensor.dtype], tuple(tensor.shape), shard)
    files = {shard: shards.get(shard) for shard in metadata.files_metadata}
    return Side(label, files, tensors, repo=repo, commit=info.sha)


def _downloaded_side(repo: str, commit: str, label: str) -> Side:
    from huggingface_hub import snapshot_download

    from mergeflow.engine.references import HUB_PATTERNS

    try:
        path = Path(snapshot_download(repo, revision=commit, allow_patterns=[*HUB_PATTERNS, "*.bin"]))
    except Exception as err:
        raise hub_failure(f"cannot download {label}", err) from None
    side = local_side(path)
    side.label, side.repo, side.commit = label, repo, commit
    return side


def download_verified(repo: str, commit: str, filename: str, sha256: str | None) -> Path:
    """``filename`` from the HF cache (downloading it if needed), its content checked against the
    Hub's LFS sha256: a corrupted cache entry is an error, not a silent difference."""
    from huggingface_hub import hf_hub_download

    from mergeflow.engine.references import content_sha256

    try:
        path = Path(hf_hub_download(repo, filename, revision=commit))
    except Exception as err:
        raise hub_failure(f"cannot download {filename} of {repo}@{commit}", err) from None
    actual = content_sha256(path) if sha256 is not None else None
    if actual != sha256:
        raise VerifyError(
            f"{repo}@{commit}: {filename} in the HF cache has sha256 {actual}, the Hub says {sha256}; "
            "delete it from the cache and retry"
        )
    return path
