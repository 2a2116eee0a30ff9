"""HF_TOKEN never reaches a merge's output or its messages, on success or on a Hub failure."""

from __future__ import annotations

import os
import subprocess
import sys

from faults_support import linear, tree
from hub_server import HubServer

TOKEN = "hf_SECRETtoken1234567890"


def test_token_is_in_no_output_or_message(models, tmp_path):
    config = tmp_path / "merge.yml"
    with HubServer() as hub:
        env = {**os.environ, "HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}

        def merge(text: str, out: str) -> subprocess.CompletedProcess:
            config.write_text(text)
            command = [sys.executable, "-m", "mergeflow.cli", "merge", str(config), str(tmp_path / out), "--quiet", "-vv"]
            return subprocess.run(command, env=env, capture_output=True, text=True)

        failed = merge("merge_method: linear\nmodels:\n  - model: org/private-model\n    parameters: {weight: 1}\n", "bad")
        merged = merge(linear(models["m1"], models["m2"]), "out")
    assert failed.returncode == 1 and "org/private-model" in failed.stderr and not (tmp_path / "bad").exists()
    assert merged.returncode == 0, merged.stderr
    for result in (failed, merged):
        assert TOKEN not in result.stdout + result.stderr
    out = tmp_path / "out"
    assert [path for path in tree(out) if TOKEN.encode() in (out / path).read_bytes()] == []
