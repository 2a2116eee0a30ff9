"""How two tensors differ: pure functions, no I/O.

"Identical" means bit-identical (same dtype, shape and bytes): that is what reproduction promises.
For tensors that differ we say by how much, in the units a person judges a merge by: the largest
absolute difference, the largest distance in ULPs (how many representable values lie between the
two numbers in the tensor's own dtype), and the fraction of elements whose bits differ.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch

# The integer type of the same width as each float type: its bit pattern, ordered, counts ULPs.
_BITS = {
    torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
    torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.int8, torch.float8_e5m2: torch.int8,
}
# Decoder blocks are named `...layers.N.` in most architectures, `h.N.` in GPT-2, `blocks.N.` elsewhere.
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
CHUNK = 1 << 24  # elements per step, so comparing a huge tensor needs little memory beyond it


@dataclass
class TensorDifference:
    name: str
    problem: str  # "values", "dtype" or "shape"
    model: str  # dtype and shape of each side, e.g. "bfloat16[32, 64]"
    reference: str
    max_abs_diff: float | None = None
    max_ulp: int | None = None
    fraction_differing: float | None = None

    def as_dict(self) -> dict:
        return {"layer": layer_of(self.name), **asdict(self)}


def layer_of(name: str) -> str:
    """``layer N`` for a tensor of decoder block N, else ``outside layers`` (embeddings, norms, head)."""
    match = _LAYER.search(name)
    return f"layer {match.group(1)}" if match else "outside layers"


def describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}"


def difference(name: str, model: torch.Tensor, reference: torch.Tensor) -> TensorDifference | None:
    """None when the two are bit-identical, else what differs and by how much."""
    a, b = describe(model), describe(reference)
    if model.shape != reference.shape:
        return TensorDifference(name, "shape", a, b)
    if model.dtype != reference.dtype:
        diff = _abs_diff(model.reshape(-1), reference.reshape(-1))
        return TensorDifference(name, "dtype", a, b, max_abs_diff=diff)
    x, y = model.reshape(-1), reference.reshape(-1)
    if x.numel() == 0 or torch.equal(_bits(x), _bits(y)):
        return None
    differing, max_ulp, max_abs = 0, 0, 0.0
    for start in range(0, x.numel(), CHUNK):
        cx, cy = x[start : start + CHUNK], y[start : start + CHUNK]
        differing += int((_bits(cx) != _bits(cy)).sum())
        max_abs = max(max_abs, _abs_diff(cx, cy))
        max_ulp = max(max_ulp, _ulp_distance(cx, cy))
    return TensorDifference(name, "values", a, b, max_abs, max_ulp, differing / x.numel())


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_BITS[t.dtype]) if t.dtype in _BITS else t


def _abs_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest |x - y| in float64; NaN where exactly one side is NaN counts as infinite."""
    dx, dy = x.to(torch.float64), y.to(torch.float64)
    diff = (dx - dy).abs()
    same_nan = dx.isnan() & dy.isnan()
    diff = torch.where(same_nan | (dx == dy), torch.zeros_like(diff), diff)
    diff = torch.nan_to_num(diff, nan=float("inf"))
    return float(diff.max()) if diff.numel() else 0.0


def _ulp_distance(x: torch.Tensor, y: torch.Tensor) -> int:
    """For floats, the largest number of representable values between x and y (0 = same bits,
    +0 and -0 count as 1 apart); for integers and bools, the largest absolute difference."""
    if x.dtype not in _BITS:
        return int((x.to(torch.int64) - y.to(torch.int64)).abs().max()) if x.numel() else 0
    width = torch.iinfo(_BITS[x.dtype]).bits

    def ordered(t: torch.Tensor) -> torch.Tensor:
        # Sign-magnitude bits to a monotonic integer line: negatives mirrored below zero.
        raw = _bits(t).to(torch.int64)
        if width < 64:
            raw = torch.where(raw < 0, raw + (1 << width), raw)  # as unsigned
            sign = 1 << (width - 1)
            return torch.where(raw >= sign, sign - 1 - raw, raw)
        return torch.where(raw < 0, torch.iinfo(torch.int64).min - raw - 1, raw)

    distance = (ordered(x) - ordered(y)).abs()
    return int(distance.max()) if distance.numel() else 0
