"""The token in HF_TOKEN reaches the Hub and nothing else: no output, log, card or report."""

from __future__ import annotations

import pytest

from conftest import snakemake, write_config

pytestmark = pytest.mark.workflow


def test_hf_token_appears_in_no_output_log_card_or_report(workdir, env, hub):
    token = env["HF_TOKEN"]
    write_config(workdir, upload={"enabled": True, "steps": ["step3"], "repo": "org/{step}-secret"})
    run = snakemake(workdir, env=env)
    assert token not in run.output
    leaked = [str(p) for p in workdir.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaked == []
    published = hub.hub.repos["org/step3-secret"].resolve("main").files
    assert {"README.md", "model.safetensors"} <= set(published)
    assert [name for name, data in published.items() if token.encode() in data] == []
