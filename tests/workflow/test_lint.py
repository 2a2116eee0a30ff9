"""The workflow passes Snakemake's linter and is snakefmt-formatted."""

from __future__ import annotations

import subprocess

import pytest

from conftest import BIN, REPO, snakemake

pytestmark = pytest.mark.workflow


def test_snakemake_lint_is_clean(baseline, offline_env):
    run = snakemake(baseline, "--lint", env=offline_env)
    assert "Lints for" not in run.output, run.output


def test_snakefmt_check_is_clean():
    result = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
