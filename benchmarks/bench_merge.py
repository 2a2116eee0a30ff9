"""Wall time and peak memory of `mergeflow merge` against `mergekit-yaml` 0.1.5 on the same merges.

Builds three random Llama-shaped bf16 checkpoints (about 170M parameters each by default, sharded
like published models), runs each merge once per tool in a fresh process, checks the outputs are
bit-identical, and prints a Markdown table (the figures in the README come from here).

    python benchmarks/bench_merge.py [--hidden 1024] [--layers 8] [--methods linear ties dare_ties]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIGS = {
    "linear": "merge_method: linear\nmodels:\n  - model: {m1}\n    parameters: {{weight: 0.5}}\n  - model: {m2}\n    parameters: {{weight: 0.5}}\ndtype: bfloat16\n",
    "slerp": "merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {m1}\nparameters: {{t: [0, 0.5, 1]}}\ndtype: bfloat16\n",
    "ties": "merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {m1}\n    parameters: {{weight: 0.5, density: 0.5}}\n  - model: {m2}\n    parameters: {{weight: 0.5, density: 0.5}}\ndtype: bfloat16\n",
    "dare_ties": "merge_method: dare_ties\nbase_model: {base}\nmodels:\n  - model: {m1}\n    parameters: {{weight: 0.5, density: 0.5}}\n  - model: {m2}\n    parameters: {{weight: 0.5, density: 0.5}}\ndtype: bfloat16\n",
}


def build_model(path: Path, seed: int, hidden: int, layers: int, vocab: int) -> int:
    """Write a Llama checkpoint of random bf16 weights in ~1 GB shards; returns its byte size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, vocab_size=vocab,
        tie_word_embeddings=False, dtype="bfloat16", architectures=["LlamaForCausalLM"],
    )
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in LlamaForCausalLM(config).state_dict().items()}
    path.mkdir(parents=True)
    config.save_pretrained(path)
    generator = torch.Generator().manual_seed(seed)
    shard, shard_bytes, files, weight_map, total = {}, 0, [], {}, 0
    for name in sorted(shapes):
        tensor = (torch.randn(shapes[name], generator=generator) * 0.02).to(torch.bfloat16)
        shard[name] = tensor
        shard_bytes += tensor.numel() * 2
        if shard_bytes > 1_000_000_000 or name == sorted(shapes)[-1]:
            files.append(shard)
            shard, shard_bytes = {}, 0
    for i, tensors in enumerate(files):
        file = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        save_file(tensors, path / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in tensors})
        total += sum(t.numel() * 2 for t in tensors.values())
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


def identical(a: Path, b: Path) -> bool:
    load = lambda d: {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}  # noqa: E731
    x, y = load(a), load(b)
    return x.keys() == y.keys() and all(torch.equal(x[k].view(torch.uint8), y[k].view(torch.uint8)) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both tools do the math")
    args = parser.parse_args()
    # Both tools run as modules of this interpreter, so no console scripts need to be installed.
    mergekit_cli = [sys.executable, "-c", "import sys; from mergekit.scripts.run_yaml import main; sys.argv[0] = 'mergekit-yaml'; main()"]
    mergeflow_cli = [sys.executable, "-m", "mergeflow.cli", "merge"]
    with tempfile.TemporaryDirectory(prefix="mergeflow-bench-") as tmp:
        root = Path(tmp)
        size = sum(build_model(root / n, s, args.hidden, args.layers, args.vocab) for s, n in enumerate(("base", "m1", "m2"))) / 3
        print(f"inputs: 3 x {size / 1e6:.0f} MB bf16 ({args.layers} layers, hidden {args.hidden}, vocab {args.vocab}), {torch.get_num_threads()} threads, math on {args.device}\n")
        print("| method | mergekit 0.1.5 | mergeflow | speed-up | peak RSS mergekit | peak RSS mergeflow | bit-identical |")
        print("|---|---|---|---|---|---|---|")
        for method in args.methods:
            config = root / f"{method}.yml"
            config.write_text(CONFIGS[method].format(base=root / "base", m1=root / "m1", m2=root / "m2"))
            # Each measurement runs in its own process so that ru_maxrss is that tool's alone.
            results = {}
            for tool, cmd in {
                "mergekit": [*mergekit_cli, str(config), str(root / "out-mergekit"), "--random-seed", "1", "--no-write-model-card", "--quiet", "--device", args.device],
                "mergeflow": [*mergeflow_cli, str(config), str(root / "out-mergeflow"), "--random-seed", "1", "--quiet", "--device", args.device],
            }.items():
                probe = [sys.executable, "-c", "import resource,subprocess,sys,time;t=time.perf_counter();subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL);print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024)", *cmd]
                wall, peak = map(float, subprocess.run(probe, check=True, capture_output=True, text=True).stdout.split())
                results[tool] = (wall, peak)
            same = identical(root / "out-mergeflow", root / "out-mergekit")
            (mk_t, mk_m), (mf_t, mf_m) = results["mergekit"], results["mergeflow"]
            print(f"| {method} | {mk_t:.1f} s | {mf_t:.1f} s | {mk_t / mf_t:.1f}x | {mk_m:.0f} MiB | {mf_m:.0f} MiB | {'yes' if same else 'NO'} |", flush=True)
            for out in ("out-mergekit", "out-mergeflow"):
                shutil.rmtree(root / out)


if __name__ == "__main__":
    main()
