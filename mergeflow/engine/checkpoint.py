"""Lazy, read-only access to one model directory's tensors.

Only headers are read up front (names, dtypes, shapes), so the pre-flight check costs no tensor
data; tensors are then read one at a time when the executor needs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from mergeflow.engine.errors import PreflightError

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
    """The tensors and ``config.json`` of one local model directory."""

    def __init__(self, path: Path, label: str):
        self.path = path
        self.label = label
        self.config = self._read_config()
        self.files = self._weight_files()
        self._pickles: dict[Path, dict[str, torch.Tensor]] = {}
        self.headers: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        self._file_of: dict[str, Path] = {}
        for file in self.files:
            for name, header in self._read_headers(file).items():
                self.headers[name] = header
                self._file_of[name] = file

    @classmethod
    def from_headers(cls, label: str, config: dict, headers: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> "Checkpoint":
        """A model known only by its config and tensor headers (read from the Hub without its
        weights): enough for planning, and so for a pre-flight that costs no weight bytes."""
        checkpoint = cls.__new__(cls)
        checkpoint.path, checkpoint.label, checkpoint.config, checkpoint.files = None, label, config, []
        checkpoint._pickles, checkpoint._file_of, checkpoint.headers = {}, {}, dict(headers)
        return checkpoint

    def _read_config(self) -> dict:
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise PreflightError(f"{self.label}: no config.json in {self.path}")
        try:
            return json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise PreflightError(f"{config_path}: invalid JSON ({err})") from None

    def _weight_files(self) -> list[Path]:
        for name in WEIGHT_FILES:
            candidate = self.path / name
            if candidate.is_file():
                if not name.endswith(".index.json"):
                    return [candidate]
                try:
                    weight_map = json.loads(candidate.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise PreflightError(f"{candidate}: not a valid index (needs 'weight_map')") from None
                files = [self.path / f for f in dict.fromkeys(weight_map.values())]
                missing = [str(f) for f in files if not f.is_file()]
                if missing:
                    raise PreflightError(f"{candidate}: shard missing: {missing[0]}")
                return files
        raise PreflightError(f"{self.label}: no model.safetensors, pytorch_model.bin or index in {self.path}")

    def _read_headers(self, file: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt") as handle:
                    slices = {name: handle.get_slice(name) for name in handle.keys()}
                    return {name: (SAFETENSORS_DTYPES[s.get_dtype()], tuple(s.get_shape())) for name, s in slices.items()}
            except Exception as err:  # safetensors raises several types for corrupt files
                raise PreflightError(f"{file}: unreadable safetensors file ({err})") from None
        return {name: (t.dtype, tuple(t.shape)) for name, t in self._pickle(file).items()}

    def _pickle(self, file: Path) -> dict[str, torch.Tensor]:
        """``.bin`` checkpoints: memory-mapped, and never unpickling code (weights_only)."""
        if file not in self._pickles:
            self._pickles[file] = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        return self._pickles[file]

    def file_of(self, name: str) -> Path:
        """The weight file holding tensor ``name``."""
        return self._file_of[name]

    def load(self, name: str) -> torch.Tensor:
        file = self._file_of[name]
        if file.suffix == ".safetensors":
            # A short-lived handle: the file's mapped pages are released with it, so resident
            # memory stays at the tensors in use instead of growing with every shard read.
            with safe_open(str(file), framework="pt") as handle:
                return handle.get_tensor(name)
        return self._pickle(file)[name].clone()

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if len(archs) == 1 else str(self.config.get("model_type", "unknown"))
