"""Lazy, read-only access to one model directory's tensors.

Only headers are read up front (names, dtypes, shapes), so the pre-flight check costs no tensor
data; tensors are then read one at a time when the executor needs them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open

from mergeflow.engine.errors import PreflightError

log = logging.getLogger("mergeflow")
_FINITE_CHECKED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}

# Discovery order follows mergekit: single file, then index, safetensors before pickles.
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)


class Checkpoint:
    """The tensors and ``config.json`` of one local model directory.

    Opening one is the integrity pre-flight: an index that names a tensor its shard lacks, a
    shard whose header disagrees with its size, a tensor name in two shards, or a pickle that
    weights-only loading refuses each fail here, in one line, before any weight is read.
    """

    def __init__(self, path: Path, label: str):
        self.path = path
        self.label = label
        self.config = self._read_config()
        self._index: dict[str, str] = {}
        self.files = self._weight_files()
        self._pickles: dict[Path, dict[str, torch.Tensor]] = {}
        self.headers: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        self._file_of: dict[str, Path] = {}
        self._data_start: dict[str, int] = {}  # safetensors tensors: where their bytes start in the file
        self._signatures: dict[Path, tuple[int, ...]] = {}  # safetensors files as the pre-flight found them
        for file in self.files:
            for name, header in self._read_headers(file).items():
                if name in self._file_of:
                    raise PreflightError(f"{file}: tensor {name} is also in {self._file_of[name].name}; a checkpoint holds each tensor once")
                self.headers[name] = header
                self._file_of[name] = file
        for name, shard in self._index.items():
            if self._file_of.get(name, self.path / shard) != self.path / shard:
                raise PreflightError(f"{self.path / shard}: the index places tensor {name} there, but it is in {self._file_of[name].name}")
            if name not in self._file_of:
                raise PreflightError(f"{self.path / shard}: the index names tensor {name}, which this shard lacks")

    @classmethod
    def from_headers(cls, label: str, config: dict, headers: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> "Checkpoint":
        """A model known only by its config and tensor headers (read from the Hub without its
        weights): enough for planning, and so for a pre-flight that costs no weight bytes."""
        checkpoint = cls.__new__(cls)
        checkpoint.path, checkpoint.label, checkpoint.config, checkpoint.files = None, label, config, []
        checkpoint._pickles, checkpoint._file_of, checkpoint.headers = {}, {}, dict(headers)
        checkpoint._data_start, checkpoint._signatures = {}, {}
        return checkpoint

    def _read_config(self) -> dict:
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise PreflightError(f"{self.label}: no config.json in {self.path}")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PreflightError(f"{config_path}: invalid JSON ({err})") from None
        except OSError as err:
            raise PreflightError(f"{config_path}: cannot read ({err.strerror})") from None
        if not isinstance(config, dict):
            raise PreflightError(f"{config_path}: expected a JSON object")
        return config

    def _weight_files(self) -> list[Path]:
        for name in WEIGHT_FILES:
            candidate = self.path / name
            if candidate.is_file():
                if not name.endswith(".index.json"):
                    return [candidate]
                try:
                    weight_map = json.loads(candidate.read_text(encoding="utf-8"))["weight_map"]
                    valid = isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                    valid = False
                if not valid:
                    raise PreflightError(f"{candidate}: not a valid index (needs 'weight_map': tensor name -> shard file)")
                for shard in weight_map.values():
                    if Path(shard).name != shard:
                        raise PreflightError(f"{candidate}: shard {shard!r} is not a file name in the model directory")
                self._index = weight_map
                files = [self.path / f for f in dict.fromkeys(weight_map.values())]
                missing = [str(f) for f in files if not f.is_file()]
                if missing:
                    raise PreflightError(f"{candidate}: shard missing: {missing[0]}")
                return files
        raise PreflightError(f"{self.label}: no model.safetensors, pytorch_model.bin or index in {self.path}")

    def _read_headers(self, file: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        if file.suffix != ".safetensors":
            return {name: (t.dtype, tuple(t.shape)) for name, t in self._pickle(file).items()}
        self._signatures[file] = _file_signature(file.stat())  # before the header, so a change after it shows
        dtypes, starts = _check_safetensors_size(file)
        self._data_start.update(starts)
        unknown = next((name for name, dtype in dtypes.items() if dtype not in SAFETENSORS_DTYPES), None)
        if unknown is not None:
            raise PreflightError(f"{file}: tensor {unknown} has dtype {dtypes[unknown]}, which mergeflow cannot read")
        try:
            with safe_open(str(file), framework="pt") as handle:
                slices = {name: handle.get_slice(name) for name in handle.keys()}
                return {name: (SAFETENSORS_DTYPES[s.get_dtype()], tuple(s.get_shape())) for name, s in slices.items()}
        except Exception as err:  # safetensors raises several types for corrupt files
            raise PreflightError(f"{file}: unreadable safetensors file ({err})") from None

    def _pickle(self, file: Path) -> dict[str, torch.Tensor]:
        """``.bin`` checkpoints: never unpickling code (weights_only); memory-mapped when saved in
        torch's zip format, read whole for the legacy format (which cannot be mapped)."""
        if file not in self._pickles:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
            except pickle.UnpicklingError as err:
                _, _, reason = str(err).partition("WeightsUnpickler error:")
                why = next((line.strip() for line in reason.splitlines() if line.strip()), "not a plain state dict")
                why = why.split(". ")[0]  # the rest suggests allow-listing, which we never do
                raise PreflightError(
                    f"{file}: refused by weights_only loading, which never runs code from a checkpoint "
                    f"({why[:160]}); convert it to safetensors with a tool you trust"
                ) from None
            except Exception as err:  # torch raises several types for corrupt or truncated files
                detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
                raise PreflightError(f"{file}: unreadable PyTorch checkpoint ({detail})") from None
            if not isinstance(state, dict):
                raise PreflightError(f"{file}: holds a {type(state).__name__}, not a state dict (tensor names -> tensors)")
            self._pickles[file] = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
        return self._pickles[file]

    def file_of(self, name: str) -> Path:
        """The weight file holding tensor ``name``."""
        return self._file_of[name]

    def load(self, name: str) -> torch.Tensor:
        """One tensor; a warning names it when it holds NaN or inf (checked here, on the reader
        thread, so the check costs no merge time)."""
        file = self._file_of[name]
        try:
            if file.suffix == ".safetensors":
                _check_unchanged(file, self._signatures[file], file.stat(), name)
                # A short-lived handle: the file's mapped pages are released with it, so resident
                # memory stays at the tensors in use instead of growing with every shard read.
                with safe_open(str(file), framework="pt") as handle:
                    tensor = handle.get_tensor(name)
            else:
                tensor = self._pickle(file)[name].clone()
        except OSError as err:
            raise PreflightError(f"{file}: cannot read tensor {name} ({err.strerror})") from None
        except Exception as err:  # a file changed or corrupted since the pre-flight
            raise PreflightError(f"{file}: cannot read tensor {name} ({type(err).__name__}: {str(err)[:200]})") from None
        if tensor.dtype in _FINITE_CHECKED and tensor.numel() and not _finite(tensor):
            _warn_not_finite(self.label, name)
        return tensor

    def source(self, name: str) -> "StoredTensor | None":
        """Tensor ``name`` as stored, to be read in ranges instead of whole (safetensors only)."""
        if name not in self._data_start:
            return None
        dtype, shape, file = *self.headers[name], self._file_of[name]
        return StoredTensor(file, self._signatures[file], self._data_start[name], dtype, shape, self.label, name)

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if len(archs) == 1 else str(self.config.get("model_type", "unknown"))


class StoredTensor:
    """One safetensors tensor read in flat ranges of elements, never whole: the inputs of merges
    too large to hold at once (``MethodSpec.merge_streamed``). Each read opens the file, checks it
    is the one the pre-flight read (``signature``), and reads just its bytes; the first pass over the tensor also checks its values, as ``load`` does."""

    def __init__(self, file: Path, signature: tuple[int, ...], data_start: int, dtype: torch.dtype, shape: tuple[int, ...], label: str, name: str):
        self.file, self.signature, self.data_start, self.dtype, self.shape = file, signature, data_start, dtype, shape
        self.label, self.name = label, name
        self._checked_until = 0  # the first pass reads in order from 0: each read that extends it is checked
        self._itemsize = torch.empty((), dtype=dtype).element_size()

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor, as a new 1-D tensor."""
        values = torch.empty(stop - start, dtype=self.dtype)
        buffer = memoryview(values.view(torch.uint8).numpy())
        position = self.data_start + start * self._itemsize
        try:
            with open(self.file, "rb", buffering=0) as handle:
                _check_unchanged(self.file, self.signature, os.fstat(handle.fileno()), self.name)
                while buffer:
                    count = os.preadv(handle.fileno(), [buffer], position)
                    if count == 0:  # cut short while open
                        raise PreflightError(f"{self.file}: ends inside tensor {self.name} (changed since the pre-flight)")
                    buffer, position = buffer[count:], position + count
        except OSError as err:
            raise PreflightError(f"{self.file}: cannot read tensor {self.name} ({err.strerror})") from None
        if start == self._checked_until and values.dtype in _FINITE_CHECKED and values.numel():
            self._checked_until = stop
            if not _finite(values):
                self._checked_until = -1  # one warning per tensor: no read starts there
                _warn_not_finite(self.label, self.name)
        return values


def _file_signature(stat: os.stat_result) -> tuple[int, ...]:
    """What tells a file unchanged during a merge: the same inode, size and mtime, which a rewrite,
    a truncation or a replacement changes. Not ctime (unlike the hash cache's): a hard link made
    to an input, or a chmod, changes it and nothing the merge reads."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _check_unchanged(file: Path, signature: tuple[int, ...], stat: os.stat_result, name: str) -> None:
    """A tensor is read only from the file the pre-flight checked: the header's offsets, and the
    inputs' hashes in the provenance, hold for no other."""
    if _file_signature(stat) != signature:
        raise PreflightError(f"{file}: changed since the pre-flight, while tensor {name} was read; run the merge again")


def _warn_not_finite(label: str, name: str) -> None:
    log.warning("model %s: tensor %s contains NaN or inf values", label, name)


def _finite(tensor: torch.Tensor) -> bool:
    """min and max propagate NaN and show inf: one pass, no tensor-sized temporary (isfinite's)."""
    low, high = torch.aminmax(tensor)
    return math.isfinite(low.item()) and math.isfinite(high.item())


def _check_safetensors_size(file: Path) -> tuple[dict[str, str], dict[str, int]]:
    """Read a safetensors header and check it against the file's size; returns each tensor's
    dtype name and the file offset its bytes start at. A truncated download or a file with
    trailing garbage fails here."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if 8 + length > size:
                raise PreflightError(f"{file}: header length {length} exceeds the file size {size} (truncated or not safetensors)")
            header = json.loads(handle.read(length))
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((int(v["data_offsets"][1]) for v in entries.values()), default=0)
        dtypes = {name: str(v["dtype"]) for name, v in entries.items()}
        starts = {name: 8 + length + int(v["data_offsets"][0]) for name, v in entries.items()}
    except PreflightError:
        raise
    except OSError as err:
        raise PreflightError(f"{file}: cannot read ({err.strerror})") from None
    except Exception:  # short read, bad JSON, missing fields
        raise PreflightError(f"{file}: not a valid safetensors file (unreadable header)") from None
    if 8 + length + end != size:
        raise PreflightError(
            f"{file}: the header describes {8 + length + end} bytes but the file has {size} "
            f"(truncated or corrupted; download it again)"
        )
    return dtypes, starts
