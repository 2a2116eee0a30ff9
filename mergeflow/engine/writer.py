"""Stream merged tensors into safetensors shards without holding a shard in memory.

The plan knows every output tensor's name, dtype and shape before the first merge, so each shard's
header can be written first and tensors appended as they are produced: peak memory follows the
largest tensor, not the shard size. Shard boundaries follow mergekit's rule (§10.1): before adding
a tensor, flush if the shard is non-empty and would exceed the limit.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from mergeflow import __version__
from mergeflow.engine.checkpoint import SAFETENSORS_DTYPES
from mergeflow.engine.errors import OutputError

_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class TensorSlot:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * self.dtype.itemsize


def parse_size(text: str) -> int:
    """``--out-shard-size``: bytes, with K/M/B suffixes in powers of 1000 as mergekit reads them."""
    text = str(text).strip()
    scale = {"K": 10**3, "M": 10**6, "B": 10**9}.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    try:
        return int(float(digits) * scale)
    except ValueError:
        raise ValueError(f"--out-shard-size: expected bytes like 5B, 500M or 1000000 (got {text!r})") from None


def layout_shards(slots: list[TensorSlot], max_bytes: int) -> list[list[TensorSlot]]:
    shards: list[list[TensorSlot]] = [[]]
    size = 0
    for slot in slots:
        if shards[-1] and max_bytes > 0 and size + slot.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(slot)
        size += slot.nbytes
    return shards if shards[0] else []


def _header(shard: list[TensorSlot]) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for slot in shard:
        entries[slot.name] = {
            "dtype": _DTYPE_NAMES[slot.dtype],
            "shape": list(slot.shape),
            "data_offsets": [offset, offset + slot.nbytes],
        }
        offset += slot.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment
    return struct.pack("<Q", len(raw)) + raw


class ShardWriter:
    """Writes planned slots in order; returns each tensor's sha256 for the provenance record."""

    def __init__(self, directory: Path, slots: list[TensorSlot], max_shard_bytes: int):
        self.directory = directory
        self.shards = layout_shards(slots, max_shard_bytes)
        count = len(self.shards)
        self.file_names = (
            ["model.safetensors"] if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        self._queue = [(i, slot) for i, shard in enumerate(self.shards) for slot in shard]
        self._position = 0
        self._file: BinaryIO | None = None
        self._file_index = -1
        self.tensor_sha256: dict[str, str] = {}

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard_index, slot = self._queue[self._position]
        if slot.name != name or tensor.dtype != slot.dtype or tuple(tensor.shape) != slot.shape:
            raise RuntimeError(
                f"tensor {name}: produced {tensor.dtype} {tuple(tensor.shape)}, planned {slot.name} "
                f"{slot.dtype} {slot.shape} (internal planning error)"
            )
        data = memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        # Hashed on a thread of its own while the bytes are written (both release the GIL): the
        # largest tensors are written alone, and their hash no longer waits for their write.
        digest: dict[str, str] = {}
        hasher = threading.Thread(target=lambda: digest.update(sha256=hashlib.sha256(data).hexdigest()), name="mergeflow-hash")
        hasher.start()
        try:
            if shard_index != self._file_index:
                self._open(shard_index)
            self._file.write(data)
        except OSError as err:
            raise OutputError(f"{self.directory / self.file_names[shard_index]}: write failed ({err.strerror})") from None
        finally:
            hasher.join()
        self.tensor_sha256[name] = digest["sha256"]
        self._position += 1

    def _open(self, shard_index: int) -> None:
        self._close()
        self._file = open(self.directory / self.file_names[shard_index], "wb")
        self._file.write(_header(self.shards[shard_index]))
        self._file_index = shard_index

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self) -> None:
        try:
            self._close()
        except OSError as err:
            raise OutputError(f"{self.directory}: write failed ({err.strerror})") from None
        if self._position != len(self._queue):
            raise RuntimeError(f"only {self._position} of {len(self._queue)} planned tensors were written")
        if len(self.shards) > 1:
            weight_map = {slot.name: self.file_names[i] for i, shard in enumerate(self.shards) for slot in shard}
            total = sum(slot.nbytes for shard in self.shards for slot in shard)
            index = {"metadata": {"total_size": total, "mergeflow_version": __version__}, "weight_map": weight_map}
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
