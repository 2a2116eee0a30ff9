"""``mergeflow moe CONFIG OUT``: mergekit-moe's command line, option for option."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mergeflow.engine import cli as engine_cli
from mergeflow.engine.errors import MergeflowError

log = logging.getLogger("mergeflow")

NO_EFFECT = {
    **engine_cli.NO_EFFECT,
    "allow_crimes": "--allow-crimes has no effect: mergekit-moe checks the output architecture instead",
    "unsafe_truncate_embeddings": "--unsafe-truncate-embeddings has no effect: a MoE build takes the base model's embeddings",
    "trust_remote_code": "--trust-remote-code has no effect: the supported base models need no remote code",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "moe",
        help="build a mixture of experts per a mergekit-moe config (bit-identical to mergekit-moe 0.1.5 on CPU)",
        description="Build a Mixtral, DeepSeek MoE, Qwen MoE or Qwen3 MoE model from dense models per a "
        "mergekit-moe config. Accepts every mergekit-moe option.",
    )
    p.add_argument("config", type=Path, help="mergekit-moe config file")
    p.add_argument("out", type=Path, help="output model directory (written atomically)")
    flag = argparse.BooleanOptionalAction
    p.add_argument("--load-in-4bit", action=flag, default=False, help="not supported: hidden states are computed in bfloat16")
    p.add_argument("--load-in-8bit", action=flag, default=False, help="not supported: hidden states are computed in bfloat16")
    p.add_argument(
        "--i-understand-this-is-not-useful-without-training", dest="allow_all_same", action=flag, default=False,
        help="allow every expert to be the same model",
    )
    engine_cli.add_merge_options(p)
    p.set_defaults(func=moe_command)


def moe_command(args) -> int:
    return engine_cli.run_guarded("moe", args, _build)


def _build(args) -> None:
    # Imported here so that the other subcommands do not pay for importing torch.
    from mergeflow.moe.build import MoEOptions, run_moe

    engine_cli.configure_logging(args.verbose)
    if args.gpu_rich:
        args.low_cpu_memory = args.read_to_gpu = args.multi_gpu = True
    for option, note in NO_EFFECT.items():
        if getattr(args, option):
            log.warning(note)
    if args.write_threads != 1:
        log.warning("--write-threads has no effect: shards are streamed tensor by tensor")
    if args.load_in_4bit or args.load_in_8bit:
        bits = 4 if args.load_in_4bit else 8
        raise MergeflowError(f"--load-in-{bits}bit: quantised hidden-state models are not supported; the base model is loaded in bfloat16")
    if not args.safe_serialization:
        raise MergeflowError("--no-safe-serialization: mergeflow writes safetensors only")
    options = MoEOptions(
        random_seed=args.random_seed,
        device=engine_cli.device_of(args),
        allow_all_same=args.allow_all_same,
        out_shard_size=engine_cli.shard_size_of(args.out_shard_size),
        copy_tokenizer=args.copy_tokenizer,
        write_model_card=args.write_model_card,
        overwrite=args.overwrite,
        transformers_cache=args.transformers_cache,
        num_threads=args.num_threads,
        progress=not args.quiet,
    )
    run_moe(engine_cli.read_config(args.config), args.out, options)
