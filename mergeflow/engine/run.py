"""One merge, end to end: parse → resolve → plan (pre-flight) → execute into a staging dir → publish."""

from __future__ import annotations

import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import torch

from mergeflow.engine.checkpoint import Checkpoint
from mergeflow.engine.config import MergeConfig, ModelRef, parse_config
from mergeflow.engine.errors import OutputError, PreflightError
from mergeflow.engine.execute import execute
from mergeflow.engine import outdir
from mergeflow.engine.layouts import convert_layout
from mergeflow.engine.lora import apply_adapter
from mergeflow.engine.outputs import merge_card, write_model_config, write_provenance, write_tokenizer
from mergeflow.engine.plan import build_plan, donor
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
    lora_merge_dtype: torch.dtype | None = None  # dtype a model+lora reference is merged in
    overwrite: bool = False
    fast_sparsify: bool = False


def run_merge(config_text: str, out: Path, options: MergeOptions) -> dict:
    """Merge per ``config_text`` into ``out``; returns the provenance record that was written."""
    config = parse_config(config_text)
    method = method_of(config)
    out = Path(out).absolute()
    refs = config.referenced_models()
    sides = {str(side): Path(side.path).expanduser() for r in refs for side in (r.base, r.lora) if side is not None}
    outdir.check_not_an_input(out, {name: path for name, path in sides.items() if path.exists()})
    outdir.check_destination(out, options.overwrite)  # before any download
    paths = {ref: resolve_model(ref, options.transformers_cache) for ref in refs}
    adapters = {ref: resolve_model(ref.lora, options.transformers_cache, "adapter") for ref in paths if ref.lora}
    resolved = {str(ref.base): path for ref, path in paths.items()} | {str(ref.lora): path for ref, path in adapters.items()}
    outdir.check_not_an_input(out, resolved)
    checkpoints = {ref: _open(ref, path, adapters.get(ref), options.lora_merge_dtype) for ref, path in paths.items()}
    built = _build_tokenizer(config, paths, checkpoints, options)
    template = _chat_template(config, paths)
    plan = build_plan(
        config, method, checkpoints, options.allow_crimes, options.unsafe_truncate_embeddings,
        built.alignment if built else None,
    )
    check_values(config, method, plan)
    seed = options.random_seed if options.random_seed is not None else secrets.randbelow(2**31)
    if options.random_seed is None:
        log.info("no --random-seed given; using seed %d (recorded in provenance.json)", seed)

    stop = threading.Event()
    beside = ThreadPoolExecutor(2, "mergeflow-beside")  # what needs no merged tensor runs while the math does
    try:
        inputs = beside.submit(input_records, paths, checkpoints, stop, adapters)
        card = beside.submit(merge_card, out.name, config, method) if options.write_model_card else None
        with outdir.guarded_output(out, sum(slot.nbytes for slot in plan.slots)) as staging:
            writer = ShardWriter(staging, plan.slots, options.out_shard_size)
            with _torch_threads(options.num_threads):
                execute(plan, method, checkpoints, writer, seed, options.device, options.progress,
                        workers=options.num_threads, fast_sparsify=options.fast_sparsify)
            try:
                donor_checkpoint = checkpoints[plan.donor]
                vocab_size = built.alignment.padded_size if built else None
                write_model_config(staging, donor_checkpoint.config, config, plan.layer_sources, vocab_size)
                write_tokenizer(
                    staging, built.tokenizer if built else None, template, config, donor_checkpoint.path,
                    options.copy_tokenizer,
                )
                if card is not None:
                    (staging / "README.md").write_text(card.result())
                    (staging / "mergekit_config.yml").write_text(config.text)
                record = _provenance(config, seed, options, inputs.result(), writer.tensor_sha256)
                write_provenance(staging, record)
            except OSError as err:
                raise OutputError(f"{out}: writing the output failed ({err.strerror}: {err.filename})") from None
        return record
    finally:
        stop.set()  # an interrupted merge does not wait for the inputs' hashes
        beside.shutdown(wait=True, cancel_futures=True)


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


def _open(ref: ModelRef, path: Path, adapter: Path | None, lora_dtype: torch.dtype | None):
    """A model's tensors as mergekit merges them: legacy layouts converted, then its LoRA applied
    (PEFT addresses the converted module names), both lazily, tensor by tensor."""
    checkpoint = convert_layout(Checkpoint(path, str(ref.base)))
    return apply_adapter(checkpoint, adapter, str(ref.lora), lora_dtype) if adapter is not None else checkpoint


def _build_tokenizer(config: MergeConfig, paths: dict[ModelRef, Path], checkpoints: dict[ModelRef, Checkpoint], options: MergeOptions):
    """The output tokenizer and alignments, when the config asks for one (before any weight is read)."""
    if config.tokenizer is None:
        return None
    from mergeflow.engine.tokenizer import build_tokenizer

    source = config.tokenizer.source
    tokenizer_paths = dict(paths)
    if isinstance(source, ModelRef) and source not in paths:  # a tokenizer donor outside the merge
        tokenizer_paths[source] = resolve_model(source, options.transformers_cache)
    configs = {ref: c.config for ref, c in checkpoints.items()}
    return build_tokenizer(config.tokenizer, donor(config), config.referenced_models(), tokenizer_paths, configs)


def _chat_template(config: MergeConfig, paths: dict[ModelRef, Path]) -> str | None:
    if config.chat_template is None:
        return None
    from mergeflow.engine.chat_templates import resolve_chat_template
    from mergeflow.engine.tokenizer import chat_templates_of

    models = [(ref, paths[ref]) for ref in config.referenced_models()]
    return resolve_chat_template(config.chat_template, lambda: chat_templates_of(models))


def input_records(
    paths: dict[ModelRef, Path], checkpoints: dict, stop: threading.Event, adapters: dict[ModelRef, Path] | None = None
) -> list[dict]:
    """Each input's identity and the sha256 of every file the merge reads from it (its adapter's
    too); ``stop`` ends the hashing early when the merge is interrupted."""
    records = []
    for ref, path in paths.items():
        checkpoint = checkpoints[ref]
        read = [*(checkpoint.inner.files if ref.lora else checkpoint.files), path / "config.json"]
        read += [path / n for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja") if (path / n).is_file()]
        record = {
            "reference": str(ref),
            "identity": identity(ref, path),
            "files": {f.name: _sha256(f, stop) for f in read},
        }
        if ref.lora:  # identity names both sides; the adapter's own files are listed apart
            adapter = identity(ref.lora, adapters[ref])
            record["identity"] += f"+{adapter}"
            record["lora"] = {
                "reference": str(ref.lora),
                "identity": adapter,
                "files": {f.name: _sha256(f, stop) for f in checkpoint.adapter.files},
            }
        records.append(record)
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
            "lora_merge_dtype": str(options.lora_merge_dtype).removeprefix("torch.") if options.lora_merge_dtype else None,
            "fast_sparsify": options.fast_sparsify,
        },
        "torch_version": torch.__version__,
        "inputs": inputs,
        "tensors": tensor_sha256,
    }
