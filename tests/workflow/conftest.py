"""Fixtures for the workflow tests: tiny models, a Hub stand-in, and real Snakemake runs.

One session-wide baseline runs the whole workflow once (real merge engine, real lm-eval on a two-
prompt task) on a three-step recipe whose inputs are local directories and one Hub model served
by ``tests/hub_server.py``. Each test then works on a copy of that finished directory (mtimes and
Snakemake's metadata included), changes one thing, and asserts exactly which jobs run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hub_server import HubServer
from tiny_models import make_model

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: snakemake, snakefmt, mergeflow

# step1: m1 and m2 in equal parts (test_slurm runs it alone).
STEP1 = """\
name: step1
merge_method: linear
models:
  - model: m1
    parameters: {weight: 0.5}
  - model: m2
    parameters: {weight: 0.5}
"""

RECIPE = """\
# A gradual merge: two specialists (a weight sweep), then a third model, then a final blend.
""" + STEP1 + """\
variants:
  a50: {}
  a75:
    models:
      m1: {weight: 0.75}
      m2: {weight: 0.25}
---
name: step2
merge_method: task_arithmetic
base_model: base
models:
  - model: step1
    parameters: {weight: 1.0}
  - model: m3
    parameters: {weight: 0.5}
---
name: step3
merge_method: slerp
base_model: step2
models:
  - model: step2
  - model: m1
parameters:
  t: 0.3
"""

TASK = """\
task: tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

# What a hub repo holds beyond what a merge needs; none of it may be fetched.
HUB_EXTRAS = {"README.md": b"# m3\n", "pytorch_model.bin": b"not needed", "onnx/model.onnx": b"not needed"}
JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


@dataclass
class Run:
    returncode: int
    output: str

    @classmethod
    def of(cls, result: subprocess.CompletedProcess) -> Run:
        return cls(result.returncode, result.stdout + result.stderr)

    @property
    def jobs(self) -> set[str]:
        """Jobs planned (dry run) or run, as ``rule[wildcards]``; the ``all`` target left out."""
        found, lines = set(), self.output.splitlines()
        for i, line in enumerate(lines):
            match = JOB.match(line)
            if not match or match.group(1) == "all":
                continue
            wildcards = ""
            for follow in lines[i + 1 :]:
                if not follow.startswith("    "):
                    break
                if follow.strip().startswith("wildcards:"):
                    wildcards = ",".join(v.split("=", 1)[1] for v in follow.split(":", 1)[1].strip().split(", "))
            found.add(f"{match.group(1)}[{wildcards}]" if wildcards else match.group(1))
        return found


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """This checkout's workflow, run in ``workdir``."""
    return [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]


def snakemake(workdir: Path, *args: str, env: dict, check: bool = True) -> Run:
    result = subprocess.run(snakemake_command(workdir, "--cores", "2", *args), env=env, capture_output=True, text=True)
    run = Run.of(result)
    if check:
        assert run.returncode == 0, run.output[-4000:]
    return run


def mergeflow(workdir: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mergeflow"), *args], cwd=workdir, env=env, capture_output=True, text=True)


def model_files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """base, three fine-tune-like children of it, and ``m3_v2``: new content for m3."""
    root = tmp_path_factory.mktemp("models")
    base = make_model(root / "base", 0, layers=2)
    built = {"base": base}
    for name, seed in [("m1", 1), ("m2", 2), ("m3", 3), ("m3_v2", 33), ("base_v2", 100)]:
        built[name] = make_model(root / name, seed, layers=2, base=None if name == "base_v2" else base)
    return built


@pytest.fixture(scope="session")
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture(scope="session")
def env(hub, tmp_path_factory):
    """What every subprocess gets: the venv first on PATH, the test Hub, a private HF cache."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
        "HF_TOKEN": "hf_test_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


@pytest.fixture(scope="session")
def offline_env(env):
    return {**env, "HF_HUB_OFFLINE": "1"}


def make_workdir(workdir: Path, recipe: str, local: dict[str, Path], recipe_file: str = "gradual.yaml", **config):
    """A run directory that has never run: each ``local`` model (name: dir) copied to models/NAME
    and aliased by its name, ``recipe`` in config/recipes/, and a config reading that directory,
    plus ``config`` (its ``models`` are further aliases)."""
    for name, path in local.items():
        shutil.copytree(path, workdir / "models" / name)
    (workdir / "config" / "recipes").mkdir(parents=True)
    (workdir / "config" / "recipes" / recipe_file).write_text(recipe)
    aliases = {name: f"models/{name}" for name in local} | config.pop("models", {})
    config = {"recipes": ["config/recipes"], "models": aliases, **config}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def edit_config(workdir: Path, edit) -> dict:
    """Apply ``edit`` (a function changing the config dict in place) to workdir's config."""
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def write_config(workdir: Path, **overrides) -> dict:
    return edit_config(workdir, lambda config: config.update(overrides))


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, models, hub, env):
    """A finished run of the three-step recipe: the state every caching test starts from."""
    workdir = tmp_path_factory.mktemp("baseline")
    hub.hub.commit("org/m3", {**model_files(models["m3"]), **HUB_EXTRAS}, "initial")
    (workdir / "tasks").mkdir()
    data = workdir / "tasks" / "tiny.jsonl"
    data.write_text('{"prompt": "1+2=", "answer": "3"}\n{"prompt": "<ab>=", "answer": "ba"}\n')
    (workdir / "tasks" / "tiny.yaml").write_text(TASK.format(data=data))
    make_workdir(
        workdir,
        RECIPE,
        {name: models[name] for name in ("base", "m1", "m2")},
        models={"m3": "org/m3"},
        evaluation={"tasks": ["tiny"], "include_path": "tasks"},
        gate={"metric": "tiny/exact_match", "max_drop": 0.05, "stop": True},
    )
    snakemake(workdir, env=env)
    return workdir


@pytest.fixture
def workdir(baseline, tmp_path):
    """A private copy of the baseline; copy2 keeps mtimes, so Snakemake sees it as up to date."""
    target = tmp_path / "work"
    shutil.copytree(baseline, target, symlinks=True)
    return target
