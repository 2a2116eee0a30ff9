"""profiles/slurm on a real one-node SLURM cluster: the jobs go through sbatch, and what the rules
declare (mem_mb, runtime, threads, gpu) and what the profile sets (partition, default resources)
reaches SLURM.

The module starts munge (unless one already runs), slurmctld and slurmd, with a fake GPU
(``Gres=gpu:fake:1`` on /dev/null), runs a one-step recipe through the profile, reads every job
back with ``scontrol show job`` (``MinJobAge`` keeps finished jobs listed), and stops the daemons it
started, by PID. It needs root and the Debian packages slurmctld, slurmd, slurm-client and munge
(``.ci/run`` installs them); without them it is skipped.
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

from conftest import REPO, STEP1, Run, make_workdir, snakemake_command

pytestmark = pytest.mark.workflow

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
PROGRAMS = ("munged", "slurmctld", "slurmd", "munge", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
# The config has to be in the default place: inside a job the plugin drops SLURM_* variables
# (SLURM_CONF included) before its own `srun`, which then reads /etc/slurm/slurm.conf.
CONF_DIR = Path("/etc/slurm")
MARKER = "# Written by mergeflow's tests/workflow/test_slurm.py for the length of the test.\n"
PARTITION = "mergeflow"  # not the cluster's default partition: the profile's choice must show
MINUTES = {"merge": 7, "evaluate": 9}  # runtimes the test config sets; the profile default is 30
SNAKEMAKE_LIMIT = 420  # seconds before the run is interrupted (SIGINT: Snakemake cancels its jobs)


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


@pytest.fixture(scope="module")
def slurm_run(cluster, models, offline_env, tmp_path_factory):
    """One run of step1 (merge of m1 and m2) and its evaluation through profiles/slurm, with
    ``--set-resources merge:gpu=1``: the merge still runs on CPU, but asks SLURM for a GPU."""
    workdir = tmp_path_factory.mktemp("slurm_work")
    threads = 2 if len(os.sched_getaffinity(0)) >= 2 else 1
    make_workdir(
        workdir,
        STEP1,
        {name: models[name] for name in ("m1", "m2")},
        "step1.yaml",
        merge={"threads": threads, "runtime": MINUTES["merge"]},
        evaluation={  # one document of one of the embedded demo tasks
            "tasks": ["demo_add"],
            "include_path": str(REPO / "workflow" / "demo" / "tasks"),
            "limit": 1,
            "runtime": MINUTES["evaluate"],
        },
    )
    # The profile as a user would use it, with the partition set.
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"]["slurm_partition"] = PARTITION
    (workdir / "profile").mkdir()
    (workdir / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))

    started = time.monotonic()
    command = snakemake_command(
        workdir,
        "--profile", str(workdir / "profile"),
        "--set-resources", "merge:gpu=1",
        # For the test only: check status after 2 s, not 20 (MinJobAge=600 allows it).
        "--slurm-init-seconds-before-status-checks", "2",
        "results/step1/eval/results.json",
    )
    result = subprocess.run(
        ["timeout", "-s", "INT", "-k", "60", str(SNAKEMAKE_LIMIT), *command],
        cwd=workdir, env=offline_env, capture_output=True, text=True, timeout=SNAKEMAKE_LIMIT + 90,
    )
    run = Run.of(result)
    seconds = time.monotonic() - started
    assert run.returncode == 0, f"{run.output[-6000:]}\n{cluster.logs()}"
    print(f"snakemake through SLURM: {seconds:.1f} s")
    return workdir, run, threads


def model_mb(path: Path) -> int:
    """What workflow/rules/common.smk estimates for a local model."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) // 2**20 + 1


def megabytes(value: str) -> int:
    """A memory amount as scontrol prints it (``2049M``, ``2G``), in MB."""
    return int(float(value[:-1]) * {"M": 1, "G": 1024, "T": 1024**2}[value[-1]])


def our_jobs(run: Run) -> dict[str, dict[str, str]]:
    """The run's SLURM jobs (their name is the run ID the plugin prints), keyed by comment,
    which the plugin sets to ``rule_RULE_wildcards_WILDCARDS``."""
    run_id = next(line.split("SLURM run ID:")[1].strip() for line in run.output.splitlines() if "SLURM run ID:" in line)
    return {job["Comment"]: job for job in scontrol_jobs() if job["JobName"] == run_id}


def test_jobs_run_through_slurm(slurm_run):
    workdir, run, _ = slurm_run
    assert run.jobs == {"fetch_model[m1]", "fetch_model[m2]", "engine_config[step1]", "merge[step1]", "evaluate[step1]"}
    jobs = our_jobs(run)
    # engine_config is a local rule: it runs in the Snakemake process itself.
    assert set(jobs) == {
        "rule_fetch_model_wildcards_m1",
        "rule_fetch_model_wildcards_m2",
        "rule_merge_wildcards_step1",
        "rule_evaluate_wildcards_step1",
    }
    for job in jobs.values():
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
    submitted = {line.split("SLURM jobid ")[1].split()[0] for line in run.output.splitlines() if "SLURM jobid" in line}
    assert submitted == {job["JobId"] for job in jobs.values()}
    assert (workdir / "results" / "step1" / "model" / "config.json").is_file()
    assert (workdir / "results" / "step1" / "model.sha256").is_file()
    results = json.loads((workdir / "results" / "step1" / "eval" / "results.json").read_text())
    assert results["results"]["demo_add"]["sample_len"] == 1  # evaluation.limit reached lm-eval


def test_declared_resources_reach_sbatch(slurm_run, models):
    """mem_mb -> --mem, runtime -> -t, threads -> --cpus-per-task, gpu -> --gpus, and the profile's
    partition (-p) and default resources for rules that declare none."""
    _, run, threads = slurm_run
    jobs = our_jobs(run)
    mb = max(model_mb(models["m1"]), model_mb(models["m2"]))
    merge, evaluate = jobs["rule_merge_wildcards_step1"], jobs["rule_evaluate_wildcards_step1"]
    fetch = jobs["rule_fetch_model_wildcards_m1"]

    for job in jobs.values():
        assert job["Partition"] == PARTITION, job
    assert megabytes(merge["MinMemoryNode"]) == 2048 + mb
    assert merge["TimeLimit"] == f"00:{MINUTES['merge']:02d}:00"
    assert merge["NumCPUs"] == str(threads) and merge["CPUs/Task"] == str(threads)
    assert merge["TresPerJob"] == "gres:gpu:1", merge  # what --gpus=1 becomes

    assert megabytes(evaluate["MinMemoryNode"]) == 2048 + 2 * mb
    assert evaluate["TimeLimit"] == f"00:{MINUTES['evaluate']:02d}:00"
    assert evaluate["NumCPUs"] == "1"
    assert "TresPerJob" not in evaluate, evaluate

    # fetch_model declares nothing: the profile's default-resources apply.
    assert megabytes(fetch["MinMemoryNode"]) == 2048
    assert fetch["TimeLimit"] == "00:30:00"
