"""Wall time and peak memory of `mergeflow merge` against `mergekit-yaml` 0.1.5 on the same merges.

Builds random Llama-shaped bf16 checkpoints (sharded like published models), then for each method
runs every tool several times, alternating, each run in a fresh process: the floor (a plain
script that imports torch, reads every input file with safetensors and writes an output of the
same size), mergekit, mergeflow, and for the magnitude-sparsifying methods mergeflow
--fast-sparsify. It prints medians, ratios, peak RSS, whether mergeflow's output is bit-identical
to mergekit's, and for --fast-sparsify how many mask entries differ from the exact ones. The
figures in the README come from here. Every tool runs from compiled bytecode, as an installed
package does: mergeflow is compiled first, into its ``__pycache__`` (git-ignored). Otherwise,
where PYTHONDONTWRITEBYTECODE is set (as on our CI machines), this checkout's editable install
would be compiled again in every run, about 0.15 s that an installed package never spends.
mergeflow remembers its inputs' hashes from one run to the next, as it does for a user's re-runs;
the cache lives in the temporary dir, unless MERGEFLOW_HASH_CACHE is set (``off``: hash every run).

    python benchmarks/bench_merge.py [--hidden 1024] [--layers 8] [--models 3] [--repeats 3]
                                     [--methods linear ties ...] [--tools floor mergekit mergeflow fast]
    python benchmarks/bench_merge.py --preset llama-7b --workdir /big/disk   # the 7B-class proof

``--preset llama-7b`` builds two Llama-7B-shaped inputs (hidden 4096, intermediate 11008, 32
layers, vocab 32000: 13.5 GB each in bf16) and runs the floor and mergeflow (exact), once, with linear and
ties: it needs about 45 GB of free disk under --workdir (inputs and one output at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import mergeflow
from mergeflow.engine.hash_cache import CACHE_VARIABLE

PRESETS = {"llama-7b": dict(hidden=4096, intermediate=11008, layers=32, vocab=32000, models=2, methods=["linear", "ties"], tools=["floor", "mergeflow"], repeats=1)}
GTA_PARAMS = {"ties": "", "dare_ties": "", "della": ", epsilon: 0.1", "breadcrumbs_ties": ", gamma: 0.01"}
FAST = {"ties", "breadcrumbs_ties"}  # the methods --fast-sparsify changes
# Each run in a fresh process, so that ru_maxrss is that run's alone.
PROBE = (
    "import resource,subprocess,sys,time;t=time.perf_counter();"
    "subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL);"
    "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024)"
)
# The floor: what any merge must do, read every input and write as many bytes, Python start and
# `import torch` included (both tools import it).
FLOOR = (
    "import sys, torch; from pathlib import Path; from safetensors.torch import load_file, save_file\n"
    "out, inputs = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]\n"
    "out.mkdir()\n"
    "for shard in sorted(inputs[0].glob('*.safetensors')):\n"
    "    for model in inputs:\n"
    "        tensors = load_file(model / shard.name)\n"
    "    save_file(tensors, out / shard.name)\n"
)


def config(method: str, models: list[Path]) -> str:
    """A merge of ``models`` (the first is the base) by ``method``, in the usual shape."""
    base, others = models[0], models[1:]
    if method == "linear":
        sources = others if len(others) >= 2 else models
        body = "".join(f"  - model: {m}\n    parameters: {{weight: {1 / len(sources):.4f}}}\n" for m in sources)
        return f"merge_method: linear\nmodels:\n{body}dtype: bfloat16\n"
    if method == "slerp":
        return f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {others[0]}\nparameters: {{t: [0, 0.5, 1]}}\ndtype: bfloat16\n"
    extra = GTA_PARAMS[method]
    body = "".join(f"  - model: {m}\n    parameters: {{weight: {1 / len(others):.4f}, density: 0.5{extra}}}\n" for m in others)
    return f"merge_method: {method}\nbase_model: {base}\nmodels:\n{body}dtype: bfloat16\n"


def build_model(path: Path, seed: int, hidden: int, intermediate: int, layers: int, vocab: int) -> tuple[int, int]:
    """Write a Llama checkpoint of random bf16 weights in ~1 GB shards; returns its byte size and
    its largest tensor's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=hidden // 128 if hidden >= 2048 else hidden // 64, vocab_size=vocab,
        tie_word_embeddings=False, dtype="bfloat16", architectures=["LlamaForCausalLM"],
    )
    config.num_key_value_heads = config.num_attention_heads
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in LlamaForCausalLM(config).state_dict().items()}
    path.mkdir(parents=True)
    config.save_pretrained(path)
    generator = torch.Generator().manual_seed(seed)
    names = sorted(shapes)
    groups, group, group_bytes = [], [], 0
    for name in names:
        group.append(name)
        group_bytes += shapes[name].numel() * 2
        if group_bytes > 1_000_000_000 or name == names[-1]:
            groups.append(group)
            group, group_bytes = [], 0
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: (torch.randn(shapes[n], generator=generator) * 0.02).to(torch.bfloat16) for n in group}
        save_file(tensors, path / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in group})
    total = sum(s.numel() * 2 for s in shapes.values())
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total, max(s.numel() * 2 for s in shapes.values())


def native_kernels() -> str:
    """Which of mergeflow's optional compiled kernels this interpreter uses: without them (no
    compiler at install, or a checkout whose ``.so`` files were not built) mergeflow is exact but
    slower, and its figures are not the README's."""
    from mergeflow.methods import introsort, linear, spherical, sparsify, task_arithmetic

    probes = {"sort": introsort.native_matches_torch, "linear": linear.native_linear_matches_torch,
              "slerp": spherical.native_slerp_matches_torch, "masks": sparsify.native_masking_matches_torch,
              "combine": task_arithmetic.native_combine_matches_torch}
    missing = [name for name, matches in probes.items() if not matches()]
    return "native kernels: all in use" if not missing else f"native kernels NOT in use: {', '.join(missing)} (figures slower than the README's)"


def tensors_of(directory: Path):
    """(name, tensor) for every tensor of a checkpoint directory, one at a time."""
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def compare(ours: Path, theirs: Path) -> tuple[bool, float]:
    """Whether two outputs are bit-identical, and the fraction of their elements that differ."""
    reference = dict(tensors_of(theirs))
    differing = total = 0
    same_names = True
    for name, tensor in tensors_of(ours):
        other = reference.pop(name, None)
        if other is None or other.shape != tensor.shape or other.dtype != tensor.dtype:
            same_names = False
            continue
        differing += int((tensor.view(torch.int16) != other.view(torch.int16)).sum()) if tensor.dtype == torch.bfloat16 else int((tensor != other).sum())
        total += tensor.numel()
    same = same_names and not reference and differing == 0
    return same, differing / max(total, 1)


def mask_difference(method: str, models: list[Path]) -> float:
    """The fraction of mask entries --fast-sparsify sets differently from the exact sparsifier,
    over every tensor and every model's delta (entries whose delta is zero are left out: keeping
    or dropping them changes nothing)."""
    from mergeflow.methods import sparsify

    base = dict(tensors_of(models[0]))
    differing = total = 0
    for other in models[1:]:
        for name, tensor in tensors_of(other):
            delta = tensor - base[name]
            if method == "ties":
                exact, fast = (sparsify.magnitude(delta, 0.5, False, fast=f) for f in (False, True))
            else:
                exact, fast = (sparsify.magnitude_outliers(delta, 0.5, 0.01, False, fast=f) for f in (False, True))
            differing += int(((exact != 0) != (fast != 0)).sum())
            total += int((delta != 0).sum())
    return differing / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), help="fixed sizes, methods and tools (see above)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=None, help="default: hidden * 11 // 4")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--models", type=int, default=3, help="inputs to build: a base and models-1 others")
    parser.add_argument("--methods", nargs="+", default=["linear", "slerp", "ties", "dare_ties", "della", "breadcrumbs_ties"])
    parser.add_argument("--tools", nargs="+", default=["floor", "mergekit", "mergeflow", "fast"], help="'fast' is mergeflow --fast-sparsify")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="-j for both tools (default: each tool's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both tools do the math")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build inputs and outputs (default: a temporary dir)")
    args = parser.parse_args()
    for key, value in PRESETS.get(args.preset, {}).items():
        setattr(args, key, value)
    intermediate = args.intermediate or args.hidden * 11 // 4
    # Both tools run as modules of this interpreter, so no console scripts need to be installed.
    commands = {
        "floor": lambda config, out, models: [sys.executable, "-c", FLOOR, str(out), *map(str, models)],
        "mergekit": lambda config, out, models: [sys.executable, "-c", "import sys; from mergekit.scripts.run_yaml import main; sys.argv[0] = 'mergekit-yaml'; main()", str(config), str(out), "--no-write-model-card"],
        "mergeflow": lambda config, out, models: [sys.executable, "-m", "mergeflow.cli", "merge", str(config), str(out)],
        "fast": lambda config, out, models: [sys.executable, "-m", "mergeflow.cli", "merge", str(config), str(out), "--fast-sparsify"],
    }
    common = ["--random-seed", "1", "--quiet", "--device", args.device] + (["-j", str(args.threads)] if args.threads else [])
    with tempfile.TemporaryDirectory(prefix="mergeflow-bench-", dir=args.workdir) as tmp:
        root = Path(tmp)
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        environment.setdefault(CACHE_VARIABLE, str(root / "hash-cache"))
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(mergeflow.__file__).parent)], env=environment, check=True)
        names = ["base"] + [f"m{i}" for i in range(1, args.models)]
        models = [root / n for n in names]
        sizes = [build_model(m, seed, args.hidden, intermediate, args.layers, args.vocab) for seed, m in enumerate(models)]
        size, largest = sizes[0]
        print(f"inputs: {args.models} x {size / 1e9:.2f} GB bf16 ({args.layers} layers, hidden {args.hidden}, intermediate {intermediate}, "
              f"vocab {args.vocab}; largest tensor {largest / 1e6:.0f} MB); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
              f"at start; math on {args.device}; {args.repeats} alternating runs per tool, medians; {native_kernels()}\n")
        columns = [f"{t} wall" for t in args.tools] + ["mergeflow / floor", "mergekit / mergeflow", "mergekit / fast"]
        columns += [f"{t} peak RSS" for t in args.tools] + ["mergeflow = mergekit", "fast: mask entries differing", "fast: output elements differing"]
        print("| method | " + " | ".join(columns) + " |")
        print("|---|" + "---|" * len(columns))
        for method in args.methods:
            config_file = root / f"{method}.yml"
            config_file.write_text(config(method, models))
            tools = [t for t in args.tools if t != "fast" or method in FAST]
            runs: dict[str, list[tuple[float, float]]] = {t: [] for t in tools}
            for _ in range(args.repeats):
                for tool in tools:  # alternating, so that drifting load hits every tool alike
                    out = root / f"out-{tool}"
                    shutil.rmtree(out, ignore_errors=True)
                    command = commands[tool](config_file, out, models) + (common if tool in ("mergekit", "mergeflow", "fast") else [])
                    probe = subprocess.run([sys.executable, "-c", PROBE, *command], check=True, capture_output=True, text=True, env=environment)
                    runs[tool].append(tuple(map(float, probe.stdout.split())))
            wall = {t: statistics.median(w for w, _ in runs[t]) for t in tools}
            peak = {t: max(m for _, m in runs[t]) for t in tools}
            ratio = lambda a, b: f"{wall[a] / wall[b]:.2f}x" if a in wall and b in wall else "-"  # noqa: E731
            same = compare(root / "out-mergeflow", root / "out-mergekit")[0] if {"mergeflow", "mergekit"} <= set(tools) else None
            masks = f"{mask_difference(method, models):.2%}" if {"fast", "mergekit"} <= set(tools) else "-"
            outputs = f"{compare(root / 'out-fast', root / 'out-mergekit')[1]:.2%}" if {"fast", "mergekit"} <= set(tools) else "-"
            cells = [f"{wall[t]:.1f} s" if t in wall else "-" for t in args.tools]
            cells += [ratio("mergeflow", "floor"), ratio("mergekit", "mergeflow"), ratio("mergekit", "fast")]
            cells += [f"{peak[t]:.0f} MiB" if t in peak else "-" for t in args.tools]
            cells += ["-" if same is None else ("yes" if same else "NO"), masks, outputs]
            print(f"| {method} | " + " | ".join(cells) + " |", flush=True)
            for tool in tools:
                shutil.rmtree(root / f"out-{tool}", ignore_errors=True)
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
