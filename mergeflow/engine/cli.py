"""``mergeflow merge CONFIG OUT``: mergekit-yaml's command line, option for option.

Options that change nothing in our engine are accepted so that commands from tutorials run
unchanged, and the run says in one line why they have no effect.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mergeflow.engine.errors import MergeflowError

log = logging.getLogger("mergeflow")

NO_EFFECT = {
    "lazy_unpickle": "--lazy-unpickle has no effect: .bin checkpoints are always memory-mapped with weights_only loading",
    "low_cpu_memory": "--low-cpu-memory has no effect: each result is streamed to disk as soon as it is merged",
    "clone_tensors": "--clone-tensors has no effect: the writer never shares storage between tensors",
    "trust_remote_code": "--trust-remote-code has no effect: mergeflow never runs model code",
    "read_to_gpu": "--read-to-gpu has no effect: tensors are read on the CPU and moved to --device for the math",
    "multi_gpu": "--multi-gpu has no effect: mergeflow merges on one device, which keeps seeded results reproducible",
    "async_write": "--async-write has no effect: shards are streamed tensor by tensor",
    "lora_merge_cache": "--lora-merge-cache has no effect: model+lora references are not supported yet",
    "lora_merge_dtype": "--lora-merge-dtype has no effect: model+lora references are not supported yet",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help="merge models per a mergekit-yaml config (bit-identical to mergekit 0.1.5 on CPU)",
        description="Merge models per a mergekit-yaml config into a Hugging Face model directory. "
        "Accepts every mergekit-yaml option.",
    )
    p.add_argument("config", type=Path, help="mergekit-yaml config file")
    p.add_argument("out", type=Path, help="output model directory (written atomically)")
    flag = argparse.BooleanOptionalAction
    p.add_argument("--allow-crimes", action=flag, default=False, help="allow merging different architectures")
    p.add_argument("--transformers-cache", default=None, help="cache_dir for Hub downloads")
    p.add_argument("--lora-merge-cache", default=None)
    p.add_argument("--lora-merge-dtype", default=None)
    p.add_argument("--cuda", action=flag, default=False, help="do the math on cuda (unless --device is given)")
    p.add_argument("--device", default=None, help="device for the math: cpu, cuda, cuda:N, auto (default cpu)")
    p.add_argument("--low-cpu-memory", action=flag, default=False)
    p.add_argument("--out-shard-size", default="5B", help="maximum shard size in bytes; K/M/B suffixes are powers of 1000")
    p.add_argument("--copy-tokenizer", action=flag, default=True, help="copy the donor's tokenizer files")
    p.add_argument("--clone-tensors", action=flag, default=False)
    p.add_argument("--trust-remote-code", action=flag, default=False)
    p.add_argument("--random-seed", type=int, default=None, help="seed for random methods; one is chosen and recorded if omitted")
    p.add_argument("--lazy-unpickle", action=flag, default=False)
    p.add_argument("--write-model-card", action=flag, default=True, help="write README.md and mergekit_config.yml")
    p.add_argument("--safe-serialization", action=flag, default=True, help="safetensors output (the only format mergeflow writes)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--quiet", action=flag, default=False, help="no progress bar")
    p.add_argument("--read-to-gpu", action=flag, default=False)
    p.add_argument("--multi-gpu", action=flag, default=False)
    p.add_argument("-j", "--num-threads", type=int, default=None, help="merge N tensors at once, with N torch CPU threads as in mergekit (default: the available cores)")
    p.add_argument("--fast-sparsify", action=flag, default=False, help="ties/breadcrumbs masks by selection instead of a full sort: much faster, not bit-identical to mergekit")
    p.add_argument("--gpu-rich", action=flag, default=False, help="alias for --cuda --low-cpu-memory --read-to-gpu --multi-gpu")
    p.add_argument("--async-write", action=flag, default=False)
    p.add_argument("--write-threads", type=int, default=1)
    p.add_argument("--unsafe-truncate-embeddings", action=flag, default=False, help="keep the common vocabulary prefix when embedding sizes differ")
    p.set_defaults(func=merge_command)


def configure_logging(verbosity: int) -> None:
    """Warnings and notes go to stderr as single lines; -v adds INFO, -vv DEBUG."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("mergeflow: %(levelname)s: %(message)s"))
    log.handlers = [handler]
    log.propagate = False
    log.setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)])


def _device(args) -> str:
    if args.device in (None, "auto"):
        import torch

        if args.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return "cuda" if args.cuda or args.gpu_rich else "cpu"
    return args.device


def merge_command(args) -> int:
    # Imported here so that the other subcommands do not pay for importing torch.
    from mergeflow.engine.run import MergeOptions, run_merge

    configure_logging(args.verbose)
    if args.gpu_rich:
        args.low_cpu_memory = args.read_to_gpu = args.multi_gpu = True
    for option, note in NO_EFFECT.items():
        if getattr(args, option):
            log.warning(note)
    if args.write_threads != 1:
        log.warning("--write-threads has no effect: shards are streamed tensor by tensor")
    try:
        if not args.safe_serialization:
            raise MergeflowError("--no-safe-serialization: mergeflow writes safetensors only")
        if args.num_threads is not None and args.num_threads < 1:
            raise MergeflowError(f"-j/--num-threads: must be at least 1 (got {args.num_threads})")
        try:
            text = args.config.read_text()
        except OSError as err:
            raise MergeflowError(f"{args.config}: cannot read config ({err.strerror})") from None
        options = MergeOptions(
            random_seed=args.random_seed,
            device=_device(args),
            allow_crimes=args.allow_crimes,
            unsafe_truncate_embeddings=args.unsafe_truncate_embeddings,
            out_shard_size=_shard_size(args.out_shard_size),
            copy_tokenizer=args.copy_tokenizer,
            write_model_card=args.write_model_card,
            transformers_cache=args.transformers_cache,
            num_threads=args.num_threads,
            fast_sparsify=args.fast_sparsify,
            progress=not args.quiet,
        )
        run_merge(text, args.out, options)
    except MergeflowError as err:
        print(f"mergeflow merge: error: {err}", file=sys.stderr)
        return 1
    return 0


def _shard_size(text: str) -> int:
    from mergeflow.engine.writer import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise MergeflowError(str(err)) from None
