"""After Snakemake itself was killed (kill -9 of its whole process group, as a scheduler does),
``mergeflow run`` (what ``make run`` runs) starts again without the user knowing --unlock."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conftest import BIN, RECIPE, make_workdir, snakemake_command

pytestmark = pytest.mark.workflow


@pytest.fixture
def fresh(tmp_path, models):
    make_workdir(
        tmp_path, RECIPE, {name: models[name] for name in ("base", "m1", "m2", "m3")},
        gate={"metric": "tiny/exact_match", "max_drop": 0.05, "stop": True},
    )
    return tmp_path


def test_run_after_a_killed_snakemake_removes_its_stale_lock(fresh, offline_env):
    killed = subprocess.Popen(
        snakemake_command(fresh, "--cores", "1"), env=offline_env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    locks = fresh / ".snakemake" / "locks"
    deadline = time.monotonic() + 120
    while not (locks.is_dir() and any(locks.iterdir())):
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert any(locks.iterdir())  # what a plain `snakemake` would now refuse to start on

    command = [str(BIN / "mergeflow"), "run", *snakemake_command(fresh, "--cores", "1", "results/step2/merge.yml")[1:]]
    run = subprocess.run(command, env=offline_env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"mergeflow run: removed the lock a killed Snakemake left in {fresh}" in run.stderr
    assert (fresh / "results" / "step2" / "merge.yml").is_file()
    assert not locks.exists() or not any(locks.iterdir())


def test_run_refuses_while_another_run_holds_the_directory(fresh, offline_env):
    lock = fresh / ".snakemake" / "mergeflow-run.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen(
        ["python3", "-c", f"import fcntl,os,sys; fd=os.open({str(lock)!r}, os.O_RDWR|os.O_CREAT); "
         "fcntl.lockf(fd, fcntl.LOCK_EX); os.write(fd, b'77@node7'); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        command = [str(BIN / "mergeflow"), "run", *snakemake_command(fresh, "-n")[1:]]
        run = subprocess.run(command, env=offline_env, capture_output=True, text=True)
    finally:
        holder.communicate("")
    assert run.returncode == 1
    assert run.stderr.strip() == f"mergeflow run: error: the workflow is already running in {fresh} (77@node7)"
