"""Wall time and peak memory of `mergeflow moe` against `mergekit-moe` 0.1.5, per gate mode.

Builds a random Llama-shaped bf16 base and three experts (the checkpoints of bench_merge.py, plus a
small tokenizer), builds a 3-expert Mixtral with each tool in a fresh process, checks the outputs
are bit-identical, and prints a Markdown table (the README's figures come from here).

    python benchmarks/bench_moe.py [--hidden 1024] [--layers 8] [--modes hidden cheap_embed random]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "tests")]
from bench_merge import build_model, identical  # noqa: E402
from tiny_models import save_tokenizer  # noqa: E402

CONFIG = """\
base_model: {base}
gate_mode: {mode}
dtype: bfloat16
experts:
  - source_model: {m1}
    positive_prompts: ["1+2=", "add 3 and 4"]
  - source_model: {m2}
    positive_prompts: ["reverse abc"]
    noise_scale: 0.01
  - source_model: {m3}
    positive_prompts: ["copy xyz"]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--modes", nargs="+", default=["hidden", "cheap_embed", "random"])
    args = parser.parse_args()
    mergekit_cli = [sys.executable, "-c", "import sys; from mergekit.scripts.moe import main; sys.argv[0] = 'mergekit-moe'; main()"]
    mergeflow_cli = [sys.executable, "-m", "mergeflow.cli", "moe"]
    with tempfile.TemporaryDirectory(prefix="mergeflow-bench-moe-") as tmp:
        root = Path(tmp)
        names = ("base", "m1", "m2", "m3")
        size = sum(build_model(root / n, s, args.hidden, args.layers, args.vocab) for s, n in enumerate(names)) / 4
        for n in names:
            save_tokenizer(root / n)
        print(f"inputs: 4 x {size / 1e6:.0f} MB bf16 ({args.layers} layers, hidden {args.hidden}, vocab {args.vocab}), {torch.get_num_threads()} threads\n")
        print("| gate mode | mergekit-moe 0.1.5 | mergeflow moe | peak RSS mergekit-moe | peak RSS mergeflow moe | bit-identical |")
        print("|---|---|---|---|---|---|")
        for mode in args.modes:
            config = root / f"{mode}.yml"
            config.write_text(CONFIG.format(mode=mode, **{n: root / n for n in names}))
            results = {}
            for tool, cmd in {
                "mergekit": [*mergekit_cli, str(config), str(root / "out-mergekit"), "--random-seed", "1", "--quiet"],
                "mergeflow": [*mergeflow_cli, str(config), str(root / "out-mergeflow"), "--random-seed", "1", "--quiet"],
            }.items():
                probe = [sys.executable, "-c", "import resource,subprocess,sys,time;t=time.perf_counter();subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL);print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024)", *cmd]
                wall, peak = map(float, subprocess.run(probe, check=True, capture_output=True, text=True).stdout.split())
                results[tool] = (wall, peak)
            same = identical(root / "out-mergeflow", root / "out-mergekit")
            (mk_t, mk_m), (mf_t, mf_m) = results["mergekit"], results["mergeflow"]
            print(f"| {mode} | {mk_t:.1f} s | {mf_t:.1f} s | {mk_m:.0f} MiB | {mf_m:.0f} MiB | {'yes' if same else 'NO'} |", flush=True)
            for out in ("out-mergekit", "out-mergeflow"):
                shutil.rmtree(root / out)


if __name__ == "__main__":
    main()
