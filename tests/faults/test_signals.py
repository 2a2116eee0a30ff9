"""SIGTERM, SIGINT and kill -9 in the middle of writing the shards.

The merge runs in a child process whose writer pauses briefly after each tensor and touches a
marker file, so the signal reliably lands mid-write without long sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from faults_support import linear, tree

SLOW_WRITER = """
import pathlib, sys, time
from mergeflow.engine import writer
marker, original = pathlib.Path(sys.argv[1]), writer.ShardWriter.write
def slow(self, name, tensor):
    original(self, name, tensor)
    marker.touch()
    time.sleep(0.1)
writer.ShardWriter.write = slow
from mergeflow.cli import main
sys.exit(main(sys.argv[2:]))
"""
FLAGS = ["--quiet", "--out-shard-size", "30K", "--random-seed", "5"]


def _merge_args(config, out):
    return ["merge", str(config), str(out), *FLAGS]


def _interrupted_run(tmp_path, config, out, signum) -> subprocess.CompletedProcess:
    marker = tmp_path / "first-tensor-written"
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(marker), *_merge_args(config, out)],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert child.poll() is None, child.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    marker.unlink()
    return subprocess.CompletedProcess(child.args, child.returncode, "", err)


@pytest.fixture(scope="session")
def dare_config(models, tmp_path_factory):
    """A seeded random method: a bit-identical rerun also shows the seed is replayed."""
    config = tmp_path_factory.mktemp("dare") / "merge.yml"
    config.write_text(
        f"merge_method: dare_ties\nbase_model: {models['base']}\nmodels:\n"
        f"  - model: {models['m1']}\n    parameters: {{weight: 0.6, density: 0.5}}\n"
        f"  - model: {models['m2']}\n    parameters: {{weight: 0.4, density: 0.5}}\n"
    )
    return config


@pytest.fixture(scope="session")
def clean_run(dare_config, tmp_path_factory):
    from mergeflow.cli import main

    out = tmp_path_factory.mktemp("clean") / "out"
    assert main(_merge_args(dare_config, out)) == 0
    return out


def _weights(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.safetensors*"))}


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_ends_the_merge_in_one_line_and_removes_staging(tmp_path, dare_config, clean_run, signum, code):
    out = tmp_path / "out"
    result = _interrupted_run(tmp_path, dare_config, out, signum)
    assert result.returncode == code, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"mergeflow merge: interrupted by {signal.Signals(signum).name}; {out} was left as it was"
    ]
    assert list(tmp_path.iterdir()) == []
    from mergeflow.cli import main

    assert main(_merge_args(dare_config, out)) == 0
    assert _weights(out) == _weights(clean_run) and len(_weights(out)) > 2


def test_sigterm_leaves_an_existing_output_untouched(tmp_path, dare_config, clean_run, models):
    from mergeflow.cli import main

    out = tmp_path / "out"
    previous = tmp_path / "previous.yml"
    previous.write_text(linear(models["m1"], models["m2"]))
    assert main(["merge", str(previous), str(out), "--quiet"]) == 0
    before = tree(out)
    result = _interrupted_run(tmp_path, dare_config, out, signal.SIGTERM)
    assert result.returncode == 143, result.stderr
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "previous.yml"]


def test_kill_9_leftovers_are_removed_by_the_next_run(tmp_path, dare_config, clean_run):
    out = tmp_path / "out"
    result = _interrupted_run(tmp_path, dare_config, out, signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in left if n.startswith(".out.tmp-")] and not out.exists()
    from mergeflow.cli import main

    assert main(_merge_args(dare_config, out)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert _weights(out) == _weights(clean_run)


def test_a_signal_during_publication_finds_the_merge_complete(models, tmp_path, monkeypatch, capsys):
    """SIGTERM between the two renames is held back: OUT is never left moved aside."""
    from faults_support import linear

    from mergeflow.cli import main
    from mergeflow.engine import outdir

    config = tmp_path / "merge.yml"
    config.write_text(linear(models["m1"], models["m2"]))
    out = tmp_path / "out"
    assert main(["merge", str(config), str(out), "--quiet"]) == 0
    real_replace = os.replace

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(outdir.os, "replace", replace_then_signal)
    config.write_text(linear(models["m1"], models["m2"]).replace("weight: 0.5", "weight: 0.2", 1))
    capsys.readouterr()
    assert main(["merge", str(config), str(out), "--quiet"]) == 0
    assert "SIGTERM arrived while the finished merge was being published" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merge.yml", "out"]
    assert "weight: 0.2" in (out / "mergekit_config.yml").read_text()
