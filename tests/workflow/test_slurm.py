"""The SLURM profile for real: a single-node SLURM (slurmctld + slurmd + munge) is installed and started by
this test (recipe of /work/shared/spec/pipeline.md), a reduced demo runs through `--profile slurm`, and the
daemons are stopped afterwards. Skipped, with the reason, where SLURM cannot be installed or started."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from workflow_helpers import REPO, copy_repository, reduced_demo, run_snakemake, write_config

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SLURM_CONF = """\
ClusterName=sslamtest
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
NodeName=localhost CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, **kwargs)


def ensure_installed() -> None:
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and cannot be installed here (needs root and apt-get)")
    installed = run("apt-get", "install", "-y", "-q", "slurm-wlm", "munge", timeout=900,
                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if installed.returncode != 0:
        pytest.skip(f"apt-get install slurm-wlm munge failed: {installed.stderr.strip()[-300:]}")


def start_munge(started: list) -> None:
    if run("pgrep", "-x", "munged").returncode == 0:
        return  # someone else's munged already serves this machine
    if not Path("/etc/munge/munge.key").is_file():
        run("mungekey", "--create", "--force")
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    run("chown", "-R", "munge:munge", "/etc/munge", "/var/log/munge", "/var/lib/munge", "/run/munge")
    result = run("runuser", "-u", "munge", "--", "munged")
    if result.returncode != 0:
        pytest.skip(f"munged did not start: {result.stderr.strip()}")
    started.append(Path("/run/munge/munged.pid"))


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 512
    return 4000


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """One local SLURM for the module's tests: a restarted slurmd takes the node a minute to come back idle."""
    ensure_installed()
    started: list[Path] = []  # pid files of the daemons this fixture started, stopped in reverse order
    root = tmp_path_factory.mktemp("slurm")
    for folder in ("state", "spool"):
        (root / folder).mkdir(parents=True)
    # The job steps (srun inside each batch job) read the default /etc/slurm/slurm.conf, not SLURM_CONF,
    # so the test's config goes there for the duration of the test; an existing one is put back afterwards.
    conf = Path("/etc/slurm/slurm.conf")
    backup = conf.read_text() if conf.is_file() else None
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(SLURM_CONF.format(root=root, cpus=os.cpu_count(), memory_mb=memory_mb()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        start_munge(started)
        for command, pid_file in ((["slurmctld", "-i"], root / "slurmctld.pid"),
                                  (["slurmd", "-N", "localhost"], root / "slurmd.pid")):
            result = run(*command, env=env)
            if result.returncode != 0:
                pytest.skip(f"{command[0]} did not start: {result.stderr.strip()}")
            started.append(pid_file)
        for _ in range(30):
            state = run("sinfo", "-h", "-o", "%T", env=env).stdout.strip()
            if state in ("idle", "mixed"):
                break
            time.sleep(1)
        else:
            pytest.skip(f"the SLURM node never became idle (state {state!r}); see {root}")
        yield env
    finally:
        for pid_file in reversed(started):
            if pid_file.is_file():
                run("kill", pid_file.read_text().strip())
        time.sleep(1)
        if backup is None:
            conf.unlink(missing_ok=True)
        else:
            conf.write_text(backup)


def signal_when_running(log: Path, env: dict, marker: str, sent: list, stop: threading.Event) -> None:
    """Send SIGUSR1 through SLURM (`scancel --signal`, to the job steps, as `--signal=USR1@lead` does) to the
    job whose log shows `marker`, once; record the job id in `sent`."""
    while not stop.is_set():
        if log.is_file() and marker in log.read_text(errors="replace"):
            listing = run("squeue", "-h", "-o", "%i|%k", env=env).stdout.splitlines()
            for line in listing:
                job_id, _, comment = line.partition("|")
                if "rule_evaluate" in comment and "random" in comment:
                    run("scancel", "--signal=USR1", job_id, env=env)
                    sent.append(job_id)
                    return
        time.sleep(0.5)


def test_reduced_demo_through_the_slurm_profile(slurm_cluster, tmp_path):
    """The whole DAG through sbatch; one evaluation job gets SLURM's warning signal mid-run, writes its state,
    exits 75, is submitted again by the profile's retries, resumes, and ends identical to an uninterrupted run."""
    repo = copy_repository(tmp_path / "repo")
    config = reduced_demo(repo / "results", variants=["SSLAM"], benchmarks=["synth_poly"])
    config["study"]["regimes"] = ["linear"]
    config["study"]["evaluate_stage1"] = False
    # The mini-batch probe: 120 steps to stop at (the demo's L-BFGS probe restarts its round instead).
    config["evaluation"]["benchmarks"]["synth_poly"]["linear"].update(solver="adamw", steps=120)
    config_path = write_config(config, repo / "slurm-demo.yaml")
    env = {**slurm_cluster, "SSLAM_PROGRESS_SECONDS": "0"}
    log = repo / "results" / "logs" / "eval" / "random" / "synth_poly" / "linear-seed0.log"
    sent: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=signal_when_running, args=(log, env, "step 30/120", sent, stop), daemon=True)
    watcher.start()
    try:
        result = run_snakemake("--configfile", str(config_path), "--profile", "slurm", "--slurm-no-account",
                               "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
                               "--seconds-between-status-checks", "2", "--jobs", "4", "--latency-wait", "5",
                               cwd=repo, timeout=1500, env=env)
    finally:
        stop.set()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "Job " in output and "has been submitted with SLURM jobid" in output  # really went through sbatch
    assert (repo / "results" / "tables" / "table2.md").is_file()
    assert (repo / "results" / "eval" / "SSLAM" / "synth_poly" / "linear" / "seed0" / "metrics.json").is_file()

    assert sent, "the random-init probe was never seen running"
    job = repo / "results" / "eval" / "random" / "synth_poly" / "linear" / "seed0"
    interrupted = json.loads((job / "metrics.json").read_text())
    assert interrupted["resumed"] == 1, "the signalled job was not stopped and resumed"
    # The same job, uninterrupted, outside SLURM: the same scores, bit for bit.
    study = repo / "results" / "study-config.yaml"
    shards = [str(path) for path in sorted((repo / "results" / "cache" / "synth_poly").glob("*.h5"))]
    clean = tmp_path / "uninterrupted"
    subprocess.run([sys.executable, "-m", "sslam.cli", "probe", "--config", str(study), "--benchmark", "synth_poly",
                    "--checkpoint", "random", "--shards", *shards, "--seed", "0", "--variant", "random",
                    "--device", "cpu", "--out", str(clean)], cwd=repo, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    reference = json.loads((clean / "metrics.json").read_text())
    assert interrupted["value"] == reference["value"] and interrupted["per_class"] == reference["per_class"]
    with np.load(job / "predictions.npz") as a, np.load(clean / "predictions.npz") as b:
        assert np.array_equal(a["scores"], b["scores"])


def test_multi_node_launch_form_runs_under_srun(slurm_cluster, tmp_path):
    """The multi-node pretraining command (srun + one torchrun per node + c10d rendezvous on the first host),
    on the one node this SLURM has: two ranks meet and train."""
    sys.path.insert(0, str(REPO / "tests" / "train"))
    from train_helpers import tiny_study

    from sslam.study.resources import torchrun_across_nodes

    config = tiny_study(tmp_path, stage1={"steps": 2, "checkpoint_every": 2, "batch_size": 2})
    out = tmp_path / "ddp"
    command = (torchrun_across_nodes(1, 2, sys.executable) +
               f" pretrain --config {config} --stage 1 --out {out} --device cpu")
    result = run("sbatch", "--wait", "--nodes=1", "--cpus-per-task=2", f"--output={tmp_path}/job.log",
                 f"--chdir={REPO}", f"--wrap={command}", env={**slurm_cluster, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, (result.stderr + (tmp_path / "job.log").read_text(errors="replace"))[-4000:]
    assert "--rdzv-backend=c10d" in command and "srun --nodes=1" in command
    snapshot = torch.load(out / "state" / "last.pt", weights_only=True)
    assert snapshot["step"] == 2 and snapshot["data"]["world_size"] == 2
