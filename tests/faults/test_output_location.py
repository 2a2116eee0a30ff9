"""OUT is never destroyed by mistake, is replaced atomically, and is written under a lock."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
from faults_support import linear, tree

from oracle import load_dir


def test_existing_file_is_refused(merge, models):
    merge.out.write_text("my notes")
    merge.fails(linear(models["m1"], models["m2"]), merge.out, "not a directory")


def test_users_directory_is_refused_without_overwrite(merge, models):
    merge.out.mkdir()
    (merge.out / "thesis.tex").write_text("years of work")
    merge.fails(linear(models["m1"], models["m2"]), merge.out, "not a previous merge output", "--overwrite")


def test_overwrite_replaces_a_users_directory(merge, models):
    merge.out.mkdir()
    (merge.out / "old.txt").write_text("x")
    code, err = merge.run(linear(models["m1"], models["m2"]), "--overwrite")
    assert code == 0, err
    assert not (merge.out / "old.txt").exists() and (merge.out / "model.safetensors").is_file()
    assert sorted(p.name for p in merge.root.iterdir()) == ["merge.yml", "out"]


def test_empty_directory_is_used(merge, models):
    merge.out.mkdir()
    code, err = merge.run(linear(models["m1"], models["m2"]))
    assert code == 0, err


@pytest.mark.parametrize("kind", ["mergeflow", "mergekit"])
def test_previous_merge_output_is_replaced_without_overwrite(merge, models, kind):
    text = linear(models["m1"], models["m2"])
    assert merge.run(text)[0] == 0
    if kind == "mergekit":  # what mergekit-yaml leaves: its config and weights, no provenance
        (merge.out / "provenance.json").unlink()
    (merge.out / "stale.txt").write_text("from the previous merge")
    code, err = merge.run(text.replace("weight: 0.5", "weight: 0.25", 1))
    assert code == 0, err
    assert not (merge.out / "stale.txt").exists()


@pytest.mark.parametrize("where", ["same", "inside", "contains", "symlink", "parent_symlink"])
def test_an_input_model_is_never_the_output(merge, model_copy, models, where):
    m1 = model_copy("m1")
    out = {
        "same": m1,
        "inside": m1 / "merged",
        "contains": m1.parent,
        "symlink": merge.root / "link",
        "parent_symlink": merge.root / "via" / "merged",
    }[where]
    if where == "symlink":
        out.symlink_to(m1)
    if where == "parent_symlink":
        (merge.root / "via").symlink_to(m1)
    expected = {"same": "is the input model", "inside": "lies inside the input model",
                "contains": "contains the input model"}.get(where, "input model")
    for flags in ((), ("--overwrite",)):
        merge.fails(linear(m1, models["m2"]), expected, str(m1), out=out, flags=flags)


def test_dangling_symlink_is_refused(merge, models):
    merge.out.symlink_to(merge.root / "nowhere")
    merge.fails(linear(models["m1"], models["m2"]), "dangling symbolic link")


def test_parent_that_is_a_file_is_one_line(merge, models):
    (merge.root / "afile").write_text("x")
    merge.fails(linear(models["m1"], models["m2"]), "afile", out=merge.root / "afile" / "out")


def test_missing_parents_are_created_and_removed_again_on_failure(merge, models, monkeypatch):
    monkeypatch.setattr("shutil.disk_usage", lambda path: _Usage(0))
    merge.fails(linear(models["m1"], models["m2"]), "not enough free space", out=merge.root / "a" / "b" / "out")


class _Usage:
    def __init__(self, free):
        self.free = free


def test_free_space_is_checked_against_the_plan(merge, models, monkeypatch):
    monkeypatch.setattr("shutil.disk_usage", lambda path: _Usage(1000))
    line = merge.fails(linear(models["m1"], models["m2"]), "not enough free space", "1.0 KB is free")
    assert "KB" in line  # the tiny model's weights: tens of kilobytes needed


def test_read_only_location_is_one_line(merge, models, monkeypatch):
    """A read-only directory (simulated: tests may run as root, who may write anywhere)."""
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(merge.root)) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr("os.open", read_only)
    merge.fails(linear(models["m1"], models["m2"]), str(merge.root), "Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_one_line(merge, models):
    os.chmod(merge.root, 0o555)
    try:
        merge.fails(linear(models["m1"], models["m2"]), "Permission denied")
    finally:
        os.chmod(merge.root, 0o755)


def test_disk_full_mid_write_leaves_the_previous_output(merge, models, monkeypatch):
    from mergeflow.engine import writer

    text = linear(models["m1"], models["m2"])
    assert merge.run(text)[0] == 0
    original = writer.ShardWriter.write
    count = {"n": 0}

    def fill_up(self, name, tensor):
        count["n"] += 1
        if count["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, name, tensor)

    monkeypatch.setattr(writer.ShardWriter, "write", fill_up)
    merge.fails(text.replace("weight: 0.5", "weight: 0.3", 1), "No space left on device")


def test_output_is_group_readable_with_the_users_umask(merge, models):
    previous = os.umask(0o022)
    try:
        assert merge.run(linear(models["m1"], models["m2"]))[0] == 0
    finally:
        os.umask(previous)
    assert merge.out.stat().st_mode & 0o777 == 0o755


def test_leftovers_of_dead_runs_are_removed_and_a_retired_output_restored(merge, models):
    text = linear(models["m1"], models["m2"])
    assert merge.run(text)[0] == 0
    first = load_dir(merge.out)
    # A run killed between its two renames: OUT moved aside into its retired dir, staging beside it.
    retired = merge.root / ".out.old-999999@deadhost-0badc0de"
    retired.mkdir()
    os.replace(merge.out, retired / "out")
    staging = merge.root / ".out.tmp-999999@deadhost-0badc0de"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")
    (merge.root / ".out.lock").write_text("999999@deadhost")  # a lock file nobody holds
    merge.fails("merge_method: frobnicate\nmodels: [{model: x}]\n", "frobnicate")  # no cleanup before the plan
    assert sorted(p.name for p in merge.root.iterdir()) == sorted([".out.lock", retired.name, staging.name, "merge.yml"])
    code, err = merge.run(text)
    assert code == 0, err
    assert sorted(p.name for p in merge.root.iterdir()) == ["merge.yml", "out"]
    assert "left by an interrupted merge" in err and "restored" in err
    assert {k: v.tolist() for k, v in load_dir(merge.out).items()} == {k: v.tolist() for k, v in first.items()}


def test_a_running_merge_holds_the_output_and_a_second_one_is_refused(merge, models, tmp_path):
    """The lock of a live merge (here a process holding it) keeps a second merge away."""
    lock = merge.root / ".out.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.lockf(fd, fcntl.LOCK_EX); os.write(fd, b'4242@busyhost'); print('locked', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        staging = merge.root / ".out.tmp-4242@busyhost-12345678"
        staging.mkdir()
        merge.fails(linear(models["m1"], models["m2"]), "another merge into it is running", "4242@busyhost")
        assert staging.is_dir()  # a live run's staging is never touched
    finally:
        holder.communicate("")
    staging.rmdir()


def test_provenance_marks_a_merge_output(merge, models):
    assert merge.run(linear(models["m1"], models["m2"]))[0] == 0
    assert json.loads((merge.out / "provenance.json").read_text())["merge_method"] == "linear"
    assert tree(merge.out)  # not empty


def test_another_outputs_staging_is_not_taken_for_a_leftover(merge, models):
    """``.out.tmp-x.tmp-...`` belongs to a merge into ``out.tmp-x``, not to one into ``out``."""
    other = merge.root / ".out.tmp-x.tmp-4242@busyhost-12345678"
    other.mkdir()
    code, err = merge.run(linear(models["m1"], models["m2"]))
    assert code == 0, err
    assert other.is_dir() and "interrupted merge" not in err
