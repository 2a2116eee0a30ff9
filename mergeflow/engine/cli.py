"""``mergeflow merge CONFIG OUT``: mergekit-yaml's command line, option for option.

Options that change nothing in our engine are accepted so that commands from tutorials run
unchanged, and the run says in one line why they have no effect.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from pathlib import Path

from mergeflow.engine.errors import Interrupted, MergeflowError, signals_interrupt

log = logging.getLogger("mergeflow")

NO_EFFECT = {
    "lazy_unpickle": "--lazy-unpickle has no effect: .bin checkpoints are loaded weights_only, memory-mapped unless in the legacy format",
    "low_cpu_memory": "--low-cpu-memory has no effect: each result is streamed to disk as soon as it is merged",
    "clone_tensors": "--clone-tensors has no effect: the writer never shares storage between tensors",
    "trust_remote_code": "--trust-remote-code has no effect: mergeflow never runs model code",
    "read_to_gpu": "--read-to-gpu has no effect: tensors are read on the CPU and moved to --device for the math",
    "multi_gpu": "--multi-gpu has no effect: mergeflow merges on one device, which keeps seeded results reproducible",
    "async_write": "--async-write has no effect: shards are streamed tensor by tensor",
    "lora_merge_cache": "--lora-merge-cache has no effect: LoRA adapters are applied tensor by tensor while merging, so no merged copy of the base is written or reused",
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
    add_merge_options(p)
    flag = argparse.BooleanOptionalAction
    p.add_argument("--fast-sparsify", action=flag, default=False, help="ties/breadcrumbs masks by selection instead of a full sort: much faster, not bit-identical to mergekit")
    p.set_defaults(func=merge_command)


def add_merge_options(p: argparse.ArgumentParser) -> None:
    """mergekit's shared merge options (§13), also taken by ``mergeflow moe``."""
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace OUT even if it is a non-empty directory that is not a previous merge output",
    )
    flag = argparse.BooleanOptionalAction
    compat = "accepted for mergekit-yaml compatibility; no effect (a warning says why)"
    p.add_argument("--allow-crimes", action=flag, default=False, help="allow merging different architectures")
    p.add_argument("--transformers-cache", default=None, help="cache_dir for Hub downloads")
    p.add_argument("--lora-merge-cache", default=None, help="accepted for mergekit compatibility; nothing is cached")
    p.add_argument("--lora-merge-dtype", default=None, help="dtype model+lora references are loaded and merged in (default: as stored)")
    p.add_argument("--cuda", action=flag, default=False, help="do the math on cuda (unless --device is given)")
    p.add_argument("--device", default=None, help="device for the math: cpu, cuda, cuda:N, auto (default cpu)")
    p.add_argument("--low-cpu-memory", action=flag, default=False, help=compat)
    p.add_argument("--out-shard-size", default="5B", help="maximum shard size in bytes; K/M/B suffixes are powers of 1000")
    p.add_argument("--copy-tokenizer", action=flag, default=True, help="copy the donor's tokenizer files")
    p.add_argument("--clone-tensors", action=flag, default=False, help=compat)
    p.add_argument("--trust-remote-code", action=flag, default=False, help=compat)
    p.add_argument("--random-seed", type=int, default=None, help="seed for random methods; one is chosen and recorded if omitted")
    p.add_argument("--lazy-unpickle", action=flag, default=False, help=compat)
    p.add_argument("--write-model-card", action=flag, default=True, help="write README.md and mergekit_config.yml")
    p.add_argument("--safe-serialization", action=flag, default=True, help="safetensors output (the only format mergeflow writes)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines: -v notes, -vv debug")
    p.add_argument("--quiet", action=flag, default=False, help="no progress (a bar on a terminal, else a line per quarter of the tensors)")
    p.add_argument("--read-to-gpu", action=flag, default=False, help=compat)
    p.add_argument("--multi-gpu", action=flag, default=False, help=compat)
    p.add_argument("-j", "--num-threads", type=int, default=None, help="merge N tensors at once, with N torch CPU threads as in mergekit (default: the available cores)")
    p.add_argument("--gpu-rich", action=flag, default=False, help="alias for --cuda --low-cpu-memory --read-to-gpu --multi-gpu")
    p.add_argument("--async-write", action=flag, default=False, help=compat)
    p.add_argument("--write-threads", type=int, default=1, help=compat)
    p.add_argument("--unsafe-truncate-embeddings", action=flag, default=False, help="keep the common vocabulary prefix when embedding sizes differ")


def configure_logging(verbosity: int) -> None:
    """Warnings and notes go to stderr as single lines; -v adds INFO, -vv DEBUG."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("mergeflow: %(levelname)s: %(message)s"))
    log.handlers = [handler]
    log.propagate = False
    log.setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)])


def device_of(args) -> str:
    """The math device, checked before any weight is read: a device torch cannot use is one line."""
    import torch

    name = args.device
    if name in (None, "auto"):
        if name == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        name = "cuda" if args.cuda or args.gpu_rich else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise MergeflowError(f"--device {name}: not a device torch knows (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda":
        flag = "--cuda" if args.device is None else f"--device {name}"
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise MergeflowError(f"{flag}: no usable GPU ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MergeflowError(f"{flag}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return name


def merge_command(args) -> int:
    return run_guarded("merge", args, _merge)


def run_guarded(command: str, args, body) -> int:
    """Run ``body(args)`` as ``mergeflow COMMAND``: a signal ends it with one ``interrupted`` line
    and 128+signum, a user error with one ``error`` line, and even a bug with one line."""
    try:
        with signals_interrupt():
            body(args)
    except Interrupted as stop:
        name = signal.Signals(stop.signum).name
        print(f"mergeflow {command}: interrupted by {name}; {args.out} was left as it was", file=sys.stderr)
        return 128 + stop.signum
    except MergeflowError as err:
        print(f"mergeflow {command}: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # a bug: still one line, with the traceback at -vv
        if args.verbose >= 2:
            traceback.print_exc()
        detail = str(err).splitlines()[0] if str(err) else ""
        print(f"mergeflow {command}: error: unexpected {type(err).__name__}: {detail} (a bug; -vv shows where)", file=sys.stderr)
        return 1
    return 0


def _merge(args) -> None:
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
    if not args.safe_serialization:
        raise MergeflowError("--no-safe-serialization: mergeflow writes safetensors only")
    if args.num_threads is not None and args.num_threads < 1:
        raise MergeflowError(f"--num-threads: expected a positive count (got {args.num_threads})")
    options = MergeOptions(
        random_seed=args.random_seed,
        device=device_of(args),
        allow_crimes=args.allow_crimes,
        unsafe_truncate_embeddings=args.unsafe_truncate_embeddings,
        out_shard_size=shard_size_of(args.out_shard_size),
        copy_tokenizer=args.copy_tokenizer,
        write_model_card=args.write_model_card,
        transformers_cache=args.transformers_cache,
        num_threads=args.num_threads,
        progress=not args.quiet,
        overwrite=args.overwrite,
        fast_sparsify=args.fast_sparsify,
        lora_merge_dtype=_lora_dtype(args.lora_merge_dtype),
    )
    run_merge(read_config(args.config), args.out, options)


def read_config(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise MergeflowError(f"{path}: cannot read config ({err.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MergeflowError(f"{path}: the config is not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start})") from None


def _lora_dtype(name: str | None):
    from mergeflow.engine.config import DTYPES

    if name is None:
        return None
    dtype = DTYPES.get(name.removeprefix("torch."))
    if dtype is None or not dtype.is_floating_point:
        names = ", ".join(n for n, d in DTYPES.items() if d.is_floating_point)
        raise MergeflowError(f"--lora-merge-dtype: unknown dtype {name!r}; use one of {names}")
    return dtype


def shard_size_of(text: str) -> int:
    from mergeflow.engine.writer import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise MergeflowError(str(err)) from None
