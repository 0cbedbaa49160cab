"""One harness for every training job (`sslam pretrain`, `sslam finetune`, `sslam probe`): what a job is apart
from its science.

    with Job(out, "sslam.train.pretrain", device, run_name="stage1", tags={...}, tracking=args.tracking) as job:
        ...the science: loops that look at `job.stop`, write to `job.metrics`, call `job.steady` once...
    return job.exit_code

On entry the job logs its banner (host, torch/CUDA, GPUs, its code fingerprint), starts catching the stop
signals of a cluster's scheduler (SIGUSR1 before a time limit, SIGTERM on preemption: `job.stop.requested`),
and opens its run record (`sslam.runtime.tracking`, published to MLflow unless the study defers it) and its one
metrics log (`OUT/metrics.jsonl`, mirrored to the run record). On exit it ends the run record, and turns a stop
at a step boundary (`Preempted`, raised by a loop after writing its state) into exit code 75 with one log line:
the same command resumes it.

`job.steady()` is a loop's signal (through `SteadyState`) that every kind of step it has has run once: from
then on its steps run no function they have not run before, so the code recorder pauses (docs/fingerprints.md,
"Steady state") and the updates run at full speed on every Python version. `job.steady_end()`, when the loop
stops stepping, traces again: the code after it (the progress bar's last line, the final checkpoint, the test
predictions, the run record's end) is recorded as usual.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sslam.fingerprints import job_fingerprint, resume_tracing, stop_tracing
from sslam.runtime.device import banner
from sslam.runtime.mlflow_tracking import job_tracker
from sslam.runtime.snapshots import PREEMPTED_EXIT_CODE, Preempted, StopSignals
from sslam.runtime.tracking import CODE_TAG, JOB_TAG, JobTracker

log = logging.getLogger(__name__)
METRICS_LOG = "metrics.jsonl"


class MetricsLog:
    """OUT/metrics.jsonl, one JSON object per logged step (the source of truth of a job's curves), mirrored to the
    job's run record. A resumed job puts the log back as its state recorded it (`restore`), then appends."""

    def __init__(self, path: str | Path, tracker: JobTracker | None = None) -> None:
        self.path = Path(path)
        self.tracker = tracker

    def write(self, record: dict[str, Any], mirror: bool = True) -> None:
        """Append `record` (it has a "step"); its numbers also go to the run record when `mirror`."""
        record = {key: _plain(value) for key, value in record.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        if mirror and self.tracker is not None:
            self.tracker.log_metrics({k: v for k, v in record.items() if k not in ("step", "round")}, record.get("step"))

    def lines(self) -> list[str]:
        """The complete lines logged so far (a snapshot keeps them: Snakemake deletes the outputs of a job it
        re-runs, and a re-run that resumes a finished snapshot must still write the whole log)."""
        if not self.path.exists():
            return []
        return [line for line in self.path.read_text().splitlines() if logged_step(line) is not None]

    def restore(self, lines: list[str], up_to_step: int | None = None) -> None:
        """The log as a state recorded it: `lines`, without those logged after `up_to_step` (a resumed run
        re-does those steps and logs them again)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line in lines if (step := logged_step(line)) is not None
                and (up_to_step is None or step <= up_to_step)]
        self.path.write_text("".join(line + "\n" for line in kept))


class SteadyState:
    """A training loop's steady state (docs/fingerprints.md, "Steady state"). The loop calls `saw(kind)` after each
    kind of step it runs; once every kind in `kinds` has run, `on_steady()` is called, once. `end()`, where the
    loop stops stepping (however it stops), calls `on_steady_end()` when the steady state had begun."""

    def __init__(self, kinds: Iterable[str], on_steady: Callable[[], None] | None = None,
                 on_steady_end: Callable[[], None] | None = None) -> None:
        self.missing = set(kinds) if on_steady is not None else set()
        self.on_steady, self.on_steady_end = on_steady, on_steady_end
        self.begun = False

    def saw(self, kind: str) -> None:
        if kind in self.missing:
            self.missing.discard(kind)
            if not self.missing:
                self.begun = True
                self.on_steady()

    def end(self) -> None:
        if self.begun:
            self.begun = False
            if self.on_steady_end is not None:
                self.on_steady_end()


def logged_step(line: str) -> int | None:
    """The step of a complete log line; None for a blank line or one cut short by a kill."""
    try:
        step = json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):   # a tensor or numpy scalar: read back at a log point only
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class Job:
    """The harness of one training job (see the module docstring). `main=False` on the other ranks of a DDP
    job: they catch the signals and run the science, but log no banner and keep no run record or metrics log."""

    def __init__(self, out: str | Path, entry_module: str, device: Any, *, run_name: str, job: str,
                 tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                 tracking: str | Path | None = None, live: bool = True, link_checkpoint: str | None = None,
                 world_size: int = 1, main: bool = True) -> None:
        self.out = Path(out)
        self.fingerprint = job_fingerprint(entry_module)
        self.device, self.world_size, self.main = device, world_size, main
        self.stop = StopSignals()
        self.tracker = (job_tracker(tracking, run_name, tags={JOB_TAG: job, **(tags or {}), CODE_TAG: self.fingerprint},
                                    params=params, job_dir=self.out, live=live, link_checkpoint=link_checkpoint)
                        if main else None)
        self.metrics = MetricsLog(self.out / METRICS_LOG, self.tracker) if main else None
        self.exit_code = 0

    def __enter__(self) -> "Job":
        if self.main:
            for line in banner(self.fingerprint, self.world_size, self.device):
                log.info(line)
        self.stop.__enter__()
        if self.tracker is not None:
            self.tracker.__enter__()
        return self

    def describe(self, params: dict[str, Any]) -> None:
        """The run record's params (the settings that shaped the run), once the job has resolved them."""
        if self.tracker is not None:
            self.tracker.set_params(params)

    def steady(self) -> None:
        """A loop's `on_steady`: every kind of step it has has run once; the code recorder pauses."""
        stop_tracing()

    def steady_end(self) -> None:
        """A loop's `on_steady_end`: it stops stepping; the code from here on is recorded again."""
        resume_tracing()

    def __exit__(self, exc_type, exc, tb) -> bool:
        preempted = exc_type is not None and issubclass(exc_type, Preempted)
        if self.tracker is not None:
            # A job stopped to be resumed is not a failed one (the resumed job makes a run of its own).
            self.tracker.end("KILLED" if preempted else "FAILED" if exc_type else "FINISHED")
        self.stop.__exit__(exc_type, exc, tb)
        if preempted:
            self.exit_code = PREEMPTED_EXIT_CODE
            if self.main:
                log.warning("%s (%s); exit %d: run the same command again to continue", exc,
                            self.stop.received or "stop requested", PREEMPTED_EXIT_CODE)
            return True
        return False
