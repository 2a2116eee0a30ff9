"""The full demo through profiles/slurm on a real one-node SLURM cluster: every job but the
bookkeeping goes through sbatch (one per merge and per evaluation), the config's cluster options
and the size estimates reach sbatch, a second run submits nothing, and a merge cancelled with
scancel is redone cleanly by the next run. Two short runs check `where: job` (downloads and
bookkeeping as jobs too) and that Hub models on a cluster need HF_HOME.

The module starts munge (unless one already runs), slurmctld and slurmd, with a fake GPU
(``Gres=gpu:fake:1`` on /dev/null), reads every job back with ``scontrol show job`` (``MinJobAge``
keeps finished jobs listed), and stops the daemons it started, by PID. It needs root and the
Debian packages slurmctld, slurmd, slurm-client and munge (``.ci/run`` installs them); without
them it is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, Run, make_workdir, model_files, snakemake_command

pytestmark = pytest.mark.workflow

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
PROGRAMS = ("munged", "slurmctld", "slurmd", "munge", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
# The config has to be in the default place: inside a job the plugin drops SLURM_* variables
# (SLURM_CONF included) before its own `srun`, which then reads /etc/slurm/slurm.conf.
CONF_DIR = Path("/etc/slurm")
MARKER = "# Written by mergeflow's tests/workflow/test_slurm.py for the length of the test.\n"
PARTITION = "mergeflow"  # not the cluster's default partition: the profile's choice must show
GPU_PARTITION = "gpu"  # what the test config sets for merges (cluster.merge.partition)
MINUTES = {"merge": 7, "evaluate": 9}  # runtimes the test config sets
SNAKEMAKE_LIMIT = 900  # seconds before a run is interrupted (SIGINT: Snakemake cancels its jobs)


def program(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def why_not() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [name for name in PROGRAMS if not program(name)]
    if missing:
        return (
            f"SLURM is not installed (no {', '.join(missing)}): "
            "apt-get install slurmctld slurmd slurm-client munge"
        )
    if os.geteuid() != 0:
        return "starting slurmd takes root"
    if not Path("/etc/munge/munge.key").exists():
        return "no munge key (/etc/munge/munge.key)"
    for name in ("slurm.conf", "gres.conf"):
        path = CONF_DIR / name
        if path.exists() and not path.read_text().startswith(MARKER):
            return f"{path} exists: this machine has a SLURM setup of its own, which the test leaves alone"
    return None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def stop(pid: int, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if ``pid`` is still there after ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not alive(pid):
            return
    raise RuntimeError(f"process {pid} would not stop")


def wait_for(what: str, check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def read_pid(path: Path) -> int:
    def pid():
        try:
            return int(path.read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    return wait_for(f"a PID in {path}", pid)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def slurm(*args: str) -> str:
    return subprocess.run([program(args[0]), *args[1:]], capture_output=True, text=True, check=True).stdout


def scontrol_jobs() -> list[dict[str, str]]:
    """Every job slurmctld still lists, as ``{field: value}`` (``scontrol show job --oneliner``)."""
    jobs = []
    for line in slurm("scontrol", "show", "job", "--oneliner").splitlines():
        fields, key = {}, None
        for token in line.split():
            if "=" in token:
                key, value = token.split("=", 1)
                fields[key] = value
            elif key:  # a value with spaces
                fields[key] += f" {token}"
        if fields:
            jobs.append(fields)
    return jobs


@dataclass
class Cluster:
    root: Path

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}:\n" + (self.root / name).read_text()[-3000:]
            for name in ("slurmctld.log", "slurmd.log")
            if (self.root / name).exists()
        )


def write_conf(root: Path) -> None:
    host = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = free_ports(2)  # beside any SLURM this machine may run
    mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 * 8 // 10
    (root / "spool").mkdir()
    (root / "state").mkdir()
    slurm_conf = f"""\
ClusterName=mergeflow-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# No cgroups in a container: track processes by parentage; memory/GPU limits are scheduled only.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmdSpoolDir={root}/spool
StateSaveLocation={root}/state
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No slurmdbd, so no sacct: the profile follows jobs with squeue, which the plugin trusts only
# if finished jobs stay listed for 3x its first status delay.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={len(os.sched_getaffinity(0))} RealMemory={mem_mb} Gres=gpu:fake:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName={PARTITION} Nodes=ALL MaxTime=INFINITE State=UP
PartitionName={GPU_PARTITION} Nodes=ALL MaxTime=INFINITE State=UP
"""
    gres_conf = f"""\
AutoDetect=off
NodeName={host} Name=gpu Type=fake File=/dev/null
"""
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    (CONF_DIR / "slurm.conf").write_text(MARKER + slurm_conf)
    (CONF_DIR / "gres.conf").write_text(MARKER + gres_conf)


def munge_works() -> bool:
    return subprocess.run([program("munge"), "-n"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node SLURM cluster (partitions ``debug``, the default, and ``mergeflow``; one fake
    GPU), torn down afterwards: jobs cancelled, daemons stopped by PID, config removed."""
    reason = why_not()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    started = []  # PIDs to stop, in reverse order
    try:
        write_conf(root)
        if not munge_works():
            run_dir = Path("/run/munge")
            run_dir.mkdir(exist_ok=True)
            shutil.chown(run_dir, "munge", "munge")
            (run_dir / "munged.pid").unlink(missing_ok=True)
            subprocess.run([program("runuser") or "runuser", "-u", "munge", "--", program("munged")], check=True)
            started.append(read_pid(run_dir / "munged.pid"))
            wait_for("munged", munge_works)
        cluster = Cluster(root)
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([program(daemon)], check=True)
            started.append(read_pid(root / f"{daemon}.pid"))
        try:
            wait_for("the node to be idle", lambda: set(slurm("sinfo", "-h", "-N", "-o", "%t").split()) == {"idle"})
        except RuntimeError as err:
            raise RuntimeError(f"{err}\n{cluster.logs()}") from None
        yield cluster
    finally:
        try:
            if len(started) > 1:  # slurmctld runs: cancel what is left, let the job steps end
                jobs = slurm("squeue", "-h", "-o", "%i").split()
                if jobs:
                    slurm("scancel", *jobs)
                    wait_for("cancelled jobs to end", lambda: not slurm("squeue", "-h", "-t", "R,CG", "-o", "%i").strip())
        finally:
            for pid in reversed(started):
                stop(pid)
            for name in ("slurm.conf", "gres.conf"):
                path = CONF_DIR / name
                if path.exists() and path.read_text().startswith(MARKER):
                    path.unlink()


def demo_workdir(workdir: Path, threads: int) -> None:
    """The embedded demo as `make run` runs it (config/, workflow/demo/), with cluster options
    the test checks, and profiles/slurm as a user would use it, with a default partition set."""
    shutil.copytree(REPO / "config", workdir / "config")
    shutil.copytree(REPO / "workflow" / "demo", workdir / "workflow" / "demo")
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["cluster"]["merge"].update(partition=GPU_PARTITION, gpus=1, cpus=threads, runtime=MINUTES["merge"])
    config["cluster"]["evaluate"].update(cpus=1, runtime=MINUTES["evaluate"])
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"]["slurm_partition"] = PARTITION
    (workdir / "profile").mkdir()
    (workdir / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))


def through_slurm(workdir: Path, env: dict) -> list[str]:
    return [
        "timeout", "-s", "INT", "-k", "60", str(SNAKEMAKE_LIMIT),
        *snakemake_command(
            workdir,
            "--profile", str(workdir / "profile"),
            # For the test only: check status after 2 s, not 20 (MinJobAge=600 allows it).
            "--slurm-init-seconds-before-status-checks", "2",
        ),
    ]


def run_slurm(workdir: Path, env: dict, cluster: Cluster) -> tuple[Run, float]:
    started = time.monotonic()
    result = subprocess.run(
        through_slurm(workdir, env), cwd=workdir, env=env, capture_output=True, text=True, timeout=SNAKEMAKE_LIMIT + 90
    )
    run = Run.of(result)
    assert run.returncode == 0, f"{run.output[-6000:]}\n{cluster.logs()}"
    return run, time.monotonic() - started


@pytest.fixture(scope="module")
def job_env(env):
    """The test environment (Hub token exported), but without the venv on PATH: the jobs must
    find mergeflow by themselves, as on a login node where nobody activated it."""
    path = [p for p in env["PATH"].split(os.pathsep) if Path(p).resolve() != BIN.resolve()]
    return {**env, "PATH": os.pathsep.join(path), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def demo_run(cluster, job_env, tmp_path_factory):
    """The full default demo (two steps with variants, evaluations, gates, selection, report)
    through profiles/slurm."""
    workdir = tmp_path_factory.mktemp("slurm_demo")
    threads = 2 if len(os.sched_getaffinity(0)) >= 2 else 1
    demo_workdir(workdir, threads)
    run, seconds = run_slurm(workdir, job_env, cluster)
    print(f"\nthe demo through SLURM: {seconds:.1f} s")
    return workdir, run, threads


def model_mb(path: Path) -> int:
    """What workflow/rules/common.smk estimates for a local model."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) // 2**20 + 1


def megabytes(value: str) -> int:
    """A memory amount as scontrol prints it (``2049M``, ``2G``), in MB."""
    return int(float(value[:-1]) * {"M": 1, "G": 1024, "T": 1024**2}[value[-1]])


def run_id(run: Run) -> str | None:
    return next((line.split("SLURM run ID:")[1].strip() for line in run.output.splitlines() if "SLURM run ID:" in line), None)


def our_jobs(run: Run) -> dict[str, dict[str, str]]:
    """The run's SLURM jobs (their name is the run ID the plugin prints), keyed by
    ``RULE[WILDCARDS]`` from the comment the plugin sets (``rule_RULE_wildcards_WILDCARDS``, a
    ``/`` written as ``_``: see ``as_comment``)."""
    name = run_id(run)
    jobs = {}
    for job in scontrol_jobs():
        if job["JobName"] == name:
            rule, _, wildcards = job["Comment"].removeprefix("rule_").partition("_wildcards_")
            jobs[f"{rule}[{wildcards}]" if wildcards else rule] = job
    return jobs


def as_comment(job: str) -> str:
    """A job named as in Snakemake's output (``evaluate[inputs/base]``), as ``our_jobs`` keys it."""
    return job.replace("/", "_")


def submitted_ids(run: Run) -> set[str]:
    return {line.split("SLURM jobid ")[1].split()[0] for line in run.output.splitlines() if "SLURM jobid" in line}


DEMO_INPUTS = ["base", "add", "rev", "copy"]
DEMO_VARIANTS = ["step1--a50", "step1--a75", "step2--c25", "step2--c50", "moe--hidden", "moe--cheap"]
MERGES = {f"merge[{node}]" for node in DEMO_VARIANTS}
EVALUATIONS = {as_comment(f"evaluate[inputs/{name}]") for name in DEMO_INPUTS} | {f"evaluate[{node}]" for node in DEMO_VARIANTS}


def test_demo_costs_one_sbatch_job_per_merge_and_evaluation(demo_run):
    workdir, run, _ = demo_run
    jobs = our_jobs(run)
    assert set(jobs) == MERGES | EVALUATIONS  # 16; all bookkeeping ran on the submitting node
    for job in jobs.values():
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
    assert submitted_ids(run) == {job["JobId"] for job in jobs.values()}
    # Everything else the demo needs ran too, as local jobs.
    assert {"gate[step1]", "gate[step2--c25]", "select[step2]", "promote[step1]", "report"} <= run.jobs
    assert {as_comment(j) for j in run.jobs} - set(jobs) == {j for j in run.jobs if not j.startswith(("merge[", "evaluate["))}
    for step in ("step1", "step2"):
        assert json.loads((workdir / "results" / step / "gate.json").read_text())["passed"] is not None
        assert (workdir / "results" / step / "model" / "config.json").is_file()
    assert "step2" in (workdir / "results" / "report" / "index.html").read_text()


def test_cluster_options_reach_sbatch(demo_run):
    """cluster.merge (partition, gpus, cpus, runtime) and cluster.evaluate (cpus, runtime) as
    sbatch flags; memory estimated from the model size; the profile's partition where the
    config sets none."""
    workdir, run, threads = demo_run
    jobs = our_jobs(run)
    mb = model_mb(workdir / "workflow" / "demo" / "models" / "base")
    for name in MERGES:
        merge = jobs[name]
        assert merge["Partition"] == GPU_PARTITION, merge
        assert megabytes(merge["MinMemoryNode"]) == 2048 + mb
        assert merge["TimeLimit"] == f"00:{MINUTES['merge']:02d}:00"
        assert merge["NumCPUs"] == str(threads) and merge["CPUs/Task"] == str(threads)
        assert merge["TresPerJob"] == "gres:gpu:1", merge  # what --gpus=1 becomes
    for name in EVALUATIONS:
        evaluate = jobs[name]
        assert evaluate["Partition"] == PARTITION, evaluate
        assert megabytes(evaluate["MinMemoryNode"]) == 2048 + 2 * mb
        assert evaluate["TimeLimit"] == f"00:{MINUTES['evaluate']:02d}:00"
        assert evaluate["NumCPUs"] == "1"
        assert "TresPerJob" not in evaluate, evaluate


def test_the_hub_token_is_in_nothing_written(demo_run, job_env):
    workdir, run, _ = demo_run
    token = job_env["HF_TOKEN"].encode()
    leaks = [p for p in workdir.rglob("*") if p.is_file() and token in p.read_bytes()]
    assert leaks == []
    assert "HF_TOKEN is exported" in run.output  # and the run recommends the token file


def test_second_run_submits_nothing(demo_run, job_env, cluster):
    workdir, _, _ = demo_run
    run, _ = run_slurm(workdir, job_env, cluster)
    assert "Nothing to be done" in run.output
    assert not submitted_ids(run)


def squeue_merges() -> dict[str, str]:
    """Running merge jobs: {job id: state}."""
    out = slurm("squeue", "-h", "-o", "%i %T %k")
    return {i: state for i, state, comment in (line.split(maxsplit=2) for line in out.splitlines()) if comment.startswith("rule_merge_")}


def test_cancelled_merge_is_redone_cleanly(demo_run, job_env, cluster):
    """scancel a merge job while it runs; the run fails, and the next one redoes the merge (same
    weights) and leaves no staging directory behind."""
    workdir, _, _ = demo_run
    node = workdir / "results" / "step2--c50"
    digest = (node / "model.sha256").read_text()
    shutil.rmtree(node / "model")
    (node / "model.sha256").unlink()

    process = subprocess.Popen(
        through_slurm(workdir, job_env), cwd=workdir, env=job_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        running = wait_for("the merge job to run", lambda: [i for i, s in squeue_merges().items() if s == "RUNNING"], timeout=120)
        # Cancel once the engine writes its staging dir (or after 30 s, mid-job anyway).
        deadline = time.monotonic() + 30
        while not list(node.glob(".model.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.005)
        staging_seen = bool(list(node.glob(".model.tmp-*")))
        slurm("scancel", *running)
        output, _ = process.communicate(timeout=SNAKEMAKE_LIMIT + 90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0, output[-4000:]
    assert {job["JobState"] for job in scontrol_jobs() if job["JobId"] in running} == {"CANCELLED"}
    assert not (node / "model.sha256").exists()
    print(f"\nstaging dir present when cancelled: {staging_seen}")

    run, _ = run_slurm(workdir, job_env, cluster)
    jobs = our_jobs(run)
    assert "merge[step2--c50]" in jobs, set(jobs)
    assert all(job["JobState"] == "COMPLETED" for job in jobs.values()), jobs
    assert (node / "model.sha256").read_text() == digest
    # scancel sends SIGTERM: the engine removes its own staging dir then (tests/faults covers
    # that); what a SIGKILL leaves, the next run's start removes under the output lock.
    assert [p for p in (workdir / "results").rglob(".model.*")] == []


def test_hub_models_on_a_cluster_need_hf_home(cluster, job_env, hub, models, tmp_path):
    """Without HF_HOME the login node would cache into a home directory the compute nodes may
    not see: the run stops before submitting anything, in one line."""
    hub.hub.commit("org/slurm-m2", model_files(models["m2"]), "initial")
    recipe = "name: s\nmerge_method: linear\nmodels:\n  - model: m1\n    parameters: {weight: 0.5}\n"
    recipe += "  - model: org/slurm-m2\n    parameters: {weight: 0.5}\n"
    make_workdir(tmp_path, recipe, {"m1": models["m1"]})
    shutil.copytree(REPO / "profiles" / "slurm", tmp_path / "profile")
    env = {k: v for k, v in job_env.items() if k not in ("HF_HOME", "HF_HUB_CACHE")}
    env.update(HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="0")
    result = subprocess.run(through_slurm(tmp_path, env), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    run = Run.of(result)
    assert run.returncode != 0
    assert "HF_HOME is not set: cluster jobs read Hub models from the HF cache" in run.output, run.output[-3000:]
    assert not submitted_ids(run) and not (tmp_path / "results").exists()


def test_where_job_submits_downloads_and_bookkeeping_too(cluster, job_env, models, tmp_path):
    """cluster.download.where and cluster.small.where set to `job`: fingerprints, gates and the
    report become sbatch jobs with their family's resources (a one-step recipe, one document)."""
    recipe = "name: step1\nmerge_method: linear\nmodels:\n  - model: m1\n    parameters: {weight: 0.5}\n"
    recipe += "  - model: m2\n    parameters: {weight: 0.5}\n"
    make_workdir(
        tmp_path, recipe, {"m1": models["m1"], "m2": models["m2"]},
        evaluation={"tasks": ["demo_add"], "include_path": str(REPO / "workflow" / "demo" / "tasks"), "limit": 1},
        gate={"metric": "demo_add/exact_match", "min": 0.0},
        cluster={"download": {"where": "job"}, "small": {"where": "job", "runtime": 4}, "evaluate": {"cpus": 1}},
    )
    shutil.copytree(REPO / "profiles" / "slurm", tmp_path / "profile")
    run, _ = run_slurm(tmp_path, job_env, cluster)
    jobs = our_jobs(run)
    assert set(jobs) == {
        "fetch_model[m1]", "fetch_model[m2]", "merge[step1]", "gate[step1]", "report",
        "evaluate[inputs_m1]", "evaluate[inputs_m2]", "evaluate[step1]",
    }
    assert all(job["JobState"] == "COMPLETED" for job in jobs.values()), jobs
    assert jobs["fetch_model[m1]"]["TimeLimit"] == "00:10:00"  # 10 minutes + 2 per GB
    assert megabytes(jobs["fetch_model[m1]"]["MinMemoryNode"]) == 4096
    assert jobs["gate[step1]"]["TimeLimit"] == jobs["report"]["TimeLimit"] == "00:04:00"
