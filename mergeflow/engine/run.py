"""One merge, end to end: parse → resolve → plan (pre-flight) → execute into a staging dir → publish."""

from __future__ import annotations

import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import torch

from mergeflow.engine.checkpoint import Checkpoint
from mergeflow.engine.config import MergeConfig, ModelRef, parse_config
from mergeflow.engine.errors import ConfigError
from mergeflow.engine.execute import execute
from mergeflow.engine.outputs import copy_tokenizer, write_model_card, write_model_config, write_provenance
from mergeflow.engine.plan import build_plan
from mergeflow.engine.references import file_sha256, identity, resolve_model
from mergeflow.engine.writer import ShardWriter, atomic_directory
from mergeflow.methods import get_method

log = logging.getLogger("mergeflow")


@dataclass
class MergeOptions:
    random_seed: int | None = None
    device: str = "cpu"
    allow_crimes: bool = False
    unsafe_truncate_embeddings: bool = False
    out_shard_size: int = 5 * 10**9
    copy_tokenizer: bool = True
    write_model_card: bool = True
    transformers_cache: str | None = None
    num_threads: int | None = None
    progress: bool = True
    fast_sparsify: bool = False


def run_merge(config_text: str, out: Path, options: MergeOptions) -> dict:
    """Merge per ``config_text`` into ``out``; returns the provenance record that was written."""
    config = parse_config(config_text)
    try:
        method = get_method(config.merge_method)
    except KeyError as err:
        raise ConfigError("merge_method", err.args[0]) from None
    paths = {ref: resolve_model(ref, options.transformers_cache) for ref in config.referenced_models()}
    checkpoints = {ref: Checkpoint(path, str(ref)) for ref, path in paths.items()}
    plan = build_plan(config, method, checkpoints, options.allow_crimes, options.unsafe_truncate_embeddings)
    seed = options.random_seed if options.random_seed is not None else secrets.randbelow(2**31)
    if options.random_seed is None:
        log.info("no --random-seed given; using seed %d (recorded in provenance.json)", seed)

    with ThreadPoolExecutor(1, "mergeflow-hash") as hasher, atomic_directory(out) as staging:
        inputs = hasher.submit(_input_records, paths, checkpoints)  # hashes while the merge runs
        writer = ShardWriter(staging, plan.slots, options.out_shard_size)
        with _torch_threads(options.num_threads):
            execute(plan, method, checkpoints, writer, seed, options.device, options.progress,
                    workers=options.num_threads, fast_sparsify=options.fast_sparsify)
        donor = checkpoints[plan.donor]
        write_model_config(staging, donor.config, config, plan.layer_sources)
        if options.copy_tokenizer:
            copy_tokenizer(donor.path, staging)
        if options.write_model_card:
            write_model_card(staging, Path(out).name, config, method)
            (staging / "mergekit_config.yml").write_text(config.text)
        record = _provenance(config, seed, options, inputs.result(), writer.tensor_sha256)
        write_provenance(staging, record)
    return record


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """-j N also gives torch N CPU threads, as in mergekit (a reduction's rounding can depend on
    it), for this merge only."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _input_records(paths: dict[ModelRef, Path], checkpoints: dict[ModelRef, Checkpoint]) -> list[dict]:
    """Each input's identity and the sha256 of every file the merge reads from it."""
    records = []
    for ref, path in paths.items():
        read = [*checkpoints[ref].files, path / "config.json"]
        read += [path / n for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model") if (path / n).is_file()]
        records.append({
            "reference": str(ref),
            "identity": identity(ref, path),
            "files": {f.name: file_sha256(f) for f in read},
        })
    return records


def _provenance(config: MergeConfig, seed: int, options: MergeOptions, inputs: list[dict], tensor_sha256: dict[str, str]) -> dict:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.text,
        "config_sha256": config.canonical_sha256,
        "merge_method": config.merge_method,
        "seed": seed,
        "seed_source": "--random-seed" if options.random_seed is not None else "generated",
        "options": {
            "device": options.device,
            "allow_crimes": options.allow_crimes,
            "unsafe_truncate_embeddings": options.unsafe_truncate_embeddings,
            "out_shard_size": options.out_shard_size,
            "fast_sparsify": options.fast_sparsify,
        },
        "torch_version": torch.__version__,
        "inputs": inputs,
        "tensors": tensor_sha256,
    }
