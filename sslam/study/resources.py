"""What the executor needs for each job group: SLURM resources, `runtime: auto` from the plan, the launcher
(python, torchrun on one node, srun + torchrun across nodes), the device argument and the thread environment.

The rules ask `Executor(study)`; the study's own `resources(group)` holds the configured values
(`study.resources.<group>`), and `sslam.study.plan` prices the jobs for `runtime: auto`.
"""
from __future__ import annotations

import math
from typing import Any

from sslam.runtime.configuration import section
from sslam.study.dag import DEFAULT_RESOURCES, Study
from sslam.study.plan import DEFAULT_GPU, DEFAULT_MFU, RUNTIME_SAFETY, plan_study

PREEMPTIBLE_GROUPS = ("pretrain", "evaluate")   # jobs that stop on SIGUSR1/SIGTERM and resume (exit 75)
RENDEZVOUS_PORT = 29500            # torchrun's c10d rendezvous on the first node of a multi-node job
TORCHRUN_SIGNALS = "TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


class Executor:
    """The executor's view of a study: one instance per workflow parse."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self._plan = None          # sslam.study.plan's jobs, for runtime: auto (computed once per parse)

    def resources(self, group: str) -> dict[str, int]:
        return self.study.resources(group)

    def job_resources(self, group: str) -> dict[str, Any]:
        """What the executor needs: gpu= only when asked for (the SLURM plugin maps it to --gpus; never
        `tasks`, which would become --ntasks-per-gpu). `runtime: auto` asks for `sslam plan`'s estimate
        of each job (a function of its wildcards) instead of one guess for the whole group."""
        resources = self.resources(group)
        extra: dict[str, Any] = {"gpu": resources["gpu"]} if resources["gpu"] else {}
        sbatch = []
        if group in PREEMPTIBLE_GROUPS:
            # SIGUSR1 to the job steps (not `B:`, the batch shell, which is a Snakemake process that the
            # signal would kill) `signal_lead_s` before the time limit: the job writes its state and exits 75.
            sbatch.append(f"--signal=USR1@{resources['signal_lead_s']}")
        if resources["nodes"] > 1:
            # One task per node launches torchrun there; GPUs are asked per node (gpu= with tasks would
            # become --ntasks-per-gpu).
            extra = {"nodes": resources["nodes"], "tasks": resources["nodes"]}
            sbatch += [f"--gpus-per-node={resources['gpu']}", "--ntasks-per-node=1"]
        if sbatch:
            extra["slurm_extra"] = "'" + " ".join(sbatch) + "'"
        runtime = resources["runtime"]
        if runtime == "auto":
            runtime = lambda wildcards: self.planned_runtime(group, dict(wildcards.items()))  # noqa: E731
        return dict(mem_mb=resources["mem_mb"], runtime=runtime, **extra)

    def planned_runtime(self, group: str, wildcards: dict[str, str]) -> int:
        """Minutes for one job of `group` from the study's plan (sslam.study.plan), computed once per parse."""
        if self._plan is None:
            settings = section(self.study.config, "study.plan")
            self._plan = {job.name: job for job in plan_study(self.study, settings.get("gpu", DEFAULT_GPU),
                                                              settings.get("mfu", DEFAULT_MFU)).jobs}
        name = (f"pretrain:{wildcards['model']}" if group == "pretrain" else
                f"evaluate:{wildcards['benchmark']}:{wildcards['regime']}")
        job = self._plan.get(name)
        if job is None:  # a benchmark whose clip count the plan does not know yet
            return DEFAULT_RESOURCES["runtime"]
        return max(10, math.ceil(job.wall_hours_per_job * 60 * RUNTIME_SAFETY))

    def device_argument(self, group: str) -> str:
        """A GPU job says so: asked for CUDA, it fails at once where CUDA does not work instead of training
        on the CPU until its time limit."""
        return "--device cuda" if self.resources(group)["gpu"] else "--device cpu"

    def thread_environment(self, group: str) -> str:
        """Torch and BLAS default to every core of the node; a job stays within its allocation (torchrun
        shares the job's threads among its processes)."""
        resources = self.resources(group)
        threads = max(1, resources["threads"] // max(1, resources["gpu"]))
        return f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"

    def launcher(self, group: str, python: str) -> str:
        """`python -m sslam.cli`; torchrun for a multi-GPU job on one node (all GPUs visible to the task); and
        with `nodes: N > 1`, one torchrun per node started by srun, meeting at a c10d rendezvous on the first
        host of the allocation. torchrun is told to pass SIGUSR1 on (SLURM's warning before the time limit)."""
        resources = self.resources(group)
        gpus, nodes = resources["gpu"], resources.get("nodes", 1)
        if nodes > 1:
            return torchrun_across_nodes(nodes, gpus, python)
        if gpus > 1:
            return f"{TORCHRUN_SIGNALS} {python} -m torch.distributed.run --standalone --nproc-per-node={gpus} -m sslam.cli"
        return f"{python} -m sslam.cli"


def torchrun_across_nodes(nodes: int, gpus_per_node: int, python: str) -> str:
    """srun starts one torchrun per node of the allocation; they meet at a c10d rendezvous on its first host."""
    head = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
    return (f"{TORCHRUN_SIGNALS} srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 {python} "
            f"-m torch.distributed.run --nnodes={nodes} --nproc-per-node={max(1, gpus_per_node)} "
            f"--rdzv-backend=c10d --rdzv-endpoint={head}:{RENDEZVOUS_PORT} --rdzv-id=$SLURM_JOB_ID -m sslam.cli")
