"""Compare two models tensor by tensor: the verdict ``mergeflow verify`` and ``reproduce`` print.

Streaming: one tensor of each side is in memory at a time. Tensors whose weight file has the same
name and sha256 on both sides are identical without being read (for a Hub side that hash is the
LFS sha256 the Hub lists, so an identical published model costs no weight download at all).
"""

from __future__ import annotations

from collections import defaultdict

from mergeflow.verify.compare import TensorDifference, difference, layer_of
from mergeflow.verify.sides import Side


def compare_models(model: Side, reference: Side, progress: bool = False) -> dict:
    """The comparison record: verdict, per-tensor differences, one-side-only tensors, by layer."""
    common = [n for n in reference.tensors if n in model.tensors]
    by_hash = [n for n in common if _same_file(model, reference, n)]
    settled = set(by_hash)
    differences: list[TensorDifference] = []
    todo = [n for n in common if n not in settled]
    for name in _progress(todo, progress):
        mine_dtype, mine_shape, _ = model.tensors[name]
        ref_dtype, ref_shape, _ = reference.tensors[name]
        if mine_shape != ref_shape:  # known from the headers: no need to read either tensor
            differences.append(TensorDifference(
                name, "shape", _header(mine_dtype, mine_shape), _header(ref_dtype, ref_shape)))
            continue
        found = difference(name, model.load(name), reference.load(name))
        if found is not None:
            differences.append(found)
    only_model = sorted(set(model.tensors) - set(reference.tensors))
    only_reference = sorted(set(reference.tensors) - set(model.tensors))
    by_layer: dict[str, list[str]] = defaultdict(list)
    for name in [d.name for d in differences] + only_model + only_reference:
        by_layer[layer_of(name)].append(name)
    identical = not differences and not only_model and not only_reference
    return {
        "verdict": "identical" if identical else "different",
        "model": model.label,
        "reference": reference.label,
        "tensors_compared": len(common),
        "identical_by_file_hash": len(by_hash),
        "differing": [d.as_dict() for d in differences],
        "only_in_model": only_model,
        "only_in_reference": only_reference,
        "differing_by_layer": dict(sorted(by_layer.items(), key=lambda kv: _layer_key(kv[0]))),
    }


def _same_file(model: Side, reference: Side, name: str) -> bool:
    file = model.tensors[name][2]
    if reference.tensors[name][2] != file:
        return False
    theirs = reference.sha256(file)
    return theirs is not None and model.sha256(file) == theirs


def _header(dtype, shape) -> str:
    return f"{str(dtype).removeprefix('torch.')}{list(shape)}"


def _layer_key(group: str) -> tuple[int, int]:
    return (0, int(group.split()[1])) if group.startswith("layer ") else (1, 0)


def _progress(names: list[str], enabled: bool):
    if not enabled or not names:
        return names
    from tqdm import tqdm

    return tqdm(names, desc="comparing tensors", unit="tensor", leave=False)


def summary_lines(record: dict, limit: int = 20) -> list[str]:
    """What a person reads: the verdict, then the differing tensors grouped by layer."""
    if record["verdict"] == "identical":
        how = f", {record['identical_by_file_hash']} by file sha256" if record["identical_by_file_hash"] else ""
        return [f"identical: {record['tensors_compared']} tensors bit-identical{how} "
                f"({record['model']} vs {record['reference']})"]
    lines = [f"different: {record['model']} vs {record['reference']}: {len(record['differing'])} of "
             f"{record['tensors_compared']} common tensors differ, {len(record['only_in_model'])} only in the "
             f"model, {len(record['only_in_reference'])} only in the reference"]
    details = {d["name"]: d for d in record["differing"]}
    shown = 0
    for group, names in record["differing_by_layer"].items():
        lines.append(f"  {group}:")
        for name in names:
            if shown == limit:
                lines.append(f"  ... {sum(map(len, record['differing_by_layer'].values())) - limit} more (see --json)")
                return lines
            shown += 1
            lines.append(f"    {_describe(name, details.get(name), record)}")
    return lines


def _describe(name: str, diff: dict | None, record: dict) -> str:
    if diff is None:
        return f"{name}: only in the {'model' if name in record['only_in_model'] else 'reference'}"
    if diff["problem"] == "values":
        return (f"{name}: max abs diff {diff['max_abs_diff']:.3g}, max {diff['max_ulp']} ULP, "
                f"{diff['fraction_differing'] * 100:.3g}% of elements differ")
    return f"{name}: {diff['problem']} {diff['model']} vs {diff['reference']}"

