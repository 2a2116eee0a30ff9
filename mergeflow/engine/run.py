"""One merge, end to end: parse → resolve → plan (pre-flight) → execute into a staging dir → publish."""

from __future__ import annotations

import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from mergeflow.engine.checkpoint import Checkpoint
from mergeflow.engine.config import MergeConfig, ModelRef, parse_config
from mergeflow.engine.errors import OutputError, PreflightError
from mergeflow.engine.execute import execute
from mergeflow.engine import outdir
from mergeflow.engine.outputs import copy_tokenizer, write_model_card, write_model_config, write_provenance
from mergeflow.engine.plan import build_plan
from mergeflow.engine.ranges import check_values
from mergeflow.engine.references import file_sha256, identity, resolve_model
from mergeflow.engine.validate import method_of
from mergeflow.engine.writer import ShardWriter

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
    overwrite: bool = False


def run_merge(config_text: str, out: Path, options: MergeOptions) -> dict:
    """Merge per ``config_text`` into ``out``; returns the provenance record that was written."""
    config = parse_config(config_text)
    method = method_of(config)
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    out = Path(out).absolute()
    refs = config.referenced_models()
    outdir.check_not_an_input(out, {str(r): Path(r.path).expanduser() for r in refs if Path(r.path).expanduser().exists()})
    outdir.check_destination(out, options.overwrite)  # before any download
    paths = {ref: resolve_model(ref, options.transformers_cache) for ref in refs}
    outdir.check_not_an_input(out, {str(ref): path for ref, path in paths.items()})
    checkpoints = {ref: Checkpoint(path, str(ref)) for ref, path in paths.items()}
    plan = build_plan(config, method, checkpoints, options.allow_crimes, options.unsafe_truncate_embeddings)
    check_values(config, method, plan)
    seed = options.random_seed if options.random_seed is not None else secrets.randbelow(2**31)
    if options.random_seed is None:
        log.info("no --random-seed given; using seed %d (recorded in provenance.json)", seed)

    created = outdir.created_parents(out)
    try:
        with outdir.output_lock(out):
            outdir.remove_leftovers(out)
            outdir.check_free_space(out, sum(slot.nbytes for slot in plan.slots))
            return _write(config, method, plan, checkpoints, paths, out, seed, options)
    except BaseException:
        outdir.remove_if_empty(created)
        raise


def _write(config, method, plan, checkpoints, paths, out: Path, seed: int, options: MergeOptions) -> dict:
    """Execute the plan into a staging directory and publish it as ``out``."""
    stop = threading.Event()
    hasher = ThreadPoolExecutor(1, "mergeflow-hash")
    try:
        inputs = hasher.submit(_input_records, paths, checkpoints, stop)  # hashes while the merge runs
        with outdir.atomic_directory(out) as staging:
            writer = ShardWriter(staging, plan.slots, options.out_shard_size)
            execute(plan, method, checkpoints, writer, seed, options.device, options.progress)
            try:
                donor = checkpoints[plan.donor]
                write_model_config(staging, donor.config, config, plan.layer_sources)
                if options.copy_tokenizer:
                    copy_tokenizer(donor.path, staging)
                if options.write_model_card:
                    write_model_card(staging, out.name, config, method)
                    (staging / "mergekit_config.yml").write_text(config.text)
                record = _provenance(config, seed, options, inputs.result(), writer.tensor_sha256)
                write_provenance(staging, record)
            except OSError as err:
                raise OutputError(f"{out}: writing the output failed ({err.strerror}: {err.filename})") from None
        return record
    finally:
        stop.set()  # an interrupted merge does not wait for the inputs' hashes
        hasher.shutdown(wait=True, cancel_futures=True)


def _input_records(paths: dict[ModelRef, Path], checkpoints: dict[ModelRef, Checkpoint], stop: threading.Event) -> list[dict]:
    """Each input's identity and the sha256 of every file the merge reads from it."""
    records = []
    for ref, path in paths.items():
        read = [*checkpoints[ref].files, path / "config.json"]
        read += [path / n for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model") if (path / n).is_file()]
        records.append({
            "reference": str(ref),
            "identity": identity(ref, path),
            "files": {f.name: _sha256(f, stop) for f in read},
        })
    return records


def _sha256(file: Path, stop: threading.Event) -> str:
    try:
        return file_sha256(file, stop)
    except OSError as err:
        raise PreflightError(f"{file}: cannot read input file ({err.strerror})") from None


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
        },
        "torch_version": torch.__version__,
        "inputs": inputs,
        "tensors": tensor_sha256,
    }
