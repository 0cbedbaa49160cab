"""Tracking as an optional side channel, tracker-neutral: what a job records about itself for an experiment
tracker, and where that record lives until a publisher has it. With no tracking URI every job still runs
and writes its own files (`metrics.json`, `metrics.jsonl`), which stay the source of truth.

A job's **run record** is plain JSON (`new_record`): a stable key, its name, tags, params, the metric points
and artifacts still to send, and its end. The job keeps it in its folder (`tracking-pending.json`) until a
publisher has confirmed all of it; `sslam track replay` publishes whatever is kept. The one module that knows
MLflow is `sslam.runtime.mlflow_tracking` (it implements `Publisher` and the `sslam track` command); this
module imports no tracker.

Where the store is: `MLFLOW_TRACKING_URI`, else the study's `tracking.json` (written once by
`sslam track init`). A local SQLite store inside the tracking.json's folder is recorded relative to it
(`sqlite:///mlflow.db`), so a moved or copied results folder keeps working.

The tags every run of the study carries (one vocabulary, docs/tracking.md):

    job         pretrain | evaluate | tables | study     what kind of job made the run
    stage       1 | 2                                    pretraining runs only
    model       stage1, SSLAM, MB-UA, random, ...        the model a run trains or evaluates
    variant     the pretraining variant a checkpoint records ("random-init" for the baseline)
    benchmark, regime, seed                              evaluation runs
    code        the job's code fingerprint (docs/fingerprints.md)
    sslam.checkpoint, sslam.pretrain_checkpoint, sslam.pretrain_run_id, sslam.run_key, sslam.study
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Protocol

from sslam.runtime.errors import SslamError, first_line
from sslam.runtime.io import atomic_write_json

PENDING_NAME = "tracking-pending.json"
FLUSH_ENV, DEFAULT_FLUSH_S = "SSLAM_TRACKING_FLUSH_SECONDS", 30.0
# The vocabulary of the study's tags (see the module docstring).
JOB_TAG, STAGE_TAG, MODEL_TAG, VARIANT_TAG, CODE_TAG = "job", "stage", "model", "variant", "code"
BENCHMARK_TAG, REGIME_TAG, SEED_TAG = "benchmark", "regime", "seed"
JOB_KINDS = ("pretrain", "evaluate", "tables", "study")
STUDY_NAME_TAG = "sslam.study"
CHECKPOINT_TAG = "sslam.checkpoint"                     # a pretraining run: its checkpoint, relative to the results
PRETRAIN_CHECKPOINT_TAG = "sslam.pretrain_checkpoint"   # an evaluation run: the checkpoint it evaluates
PRETRAIN_RUN_TAG = "sslam.pretrain_run_id"              # an evaluation run: the pretraining run of that checkpoint
RUN_KEY_TAG = "sslam.run_key"                           # every run: its record's key (publishing is idempotent)
MAX_PARAM_LENGTH = 6000
SQLITE_PREFIX = "sqlite:///"


class TrackingUnavailable(SslamError):
    """The tracking store did not answer within the job's budget (or refused a request)."""


class Publisher(Protocol):
    """What sends run records to a tracker (`sslam.runtime.mlflow_tracking.MlflowPublisher`)."""

    failure: str | None          # why the store was given up (None while it answers)

    def send(self, record: dict[str, Any]) -> None:
        """Send what `record` still holds, removing each part from it once the store has it; raises
        TrackingUnavailable when the store does not answer (what was not sent stays in the record)."""


# --------------------------------------------------------------------------------------------- where
def resolve_tracking(tracking_file: str | Path | None) -> dict[str, Any] | None:
    """Return {"uri", "experiment_id", "parent_run_id", ...} or None when tracking is off. A relative SQLite
    URI is resolved against the tracking.json's folder; MLFLOW_TRACKING_URI wins, as given. A tracking.json
    that is named but not there yet (a job that started before `sslam track init` wrote it) means: keep the run
    record in the job folder, for `sslam track replay`."""
    info: dict[str, Any] = {}
    if tracking_file and not Path(tracking_file).exists() and not os.environ.get("MLFLOW_TRACKING_URI"):
        return {"uri": None, "deferred": True, "tracking_file": str(tracking_file)}
    if tracking_file and Path(tracking_file).is_file():
        try:
            info = json.loads(Path(tracking_file).read_text())
        except (OSError, ValueError) as error:
            warn(f"cannot read {tracking_file} ({error}); the job runs untracked")
            return None
        info["tracking_file"] = str(tracking_file)
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    uri = environment or info.get("uri")
    if not uri:
        return None
    if not environment and tracking_file:
        uri = absolute_store_uri(uri, Path(tracking_file).parent)
    info["uri"] = uri
    return info


def absolute_store_uri(uri: str, folder: Path) -> str:
    """`sqlite:///mlflow.db` (relative) -> `sqlite:////abs/folder/mlflow.db`; other URIs unchanged."""
    if uri.startswith(SQLITE_PREFIX) and not uri[len(SQLITE_PREFIX):].startswith("/"):
        return SQLITE_PREFIX + str((folder / uri[len(SQLITE_PREFIX):]).resolve())
    return uri


def portable_store_uri(uri: str, folder: Path) -> str:
    """The inverse for tracking.json: a SQLite store inside `folder` is recorded relative to it."""
    if uri.startswith(SQLITE_PREFIX) and uri[len(SQLITE_PREFIX):].startswith("/"):
        database = Path(uri[len(SQLITE_PREFIX):]).resolve()
        try:
            return SQLITE_PREFIX + database.relative_to(folder.resolve()).as_posix()
        except ValueError:
            return uri
    return uri


def results_relative(path: str | Path, results: str | Path | None) -> str:
    """How runs name a checkpoint: its path relative to the study's results folder (absolute outside it)."""
    resolved = Path(path).resolve()
    if results:
        try:
            return resolved.relative_to(Path(results).resolve()).as_posix()
        except ValueError:
            pass
    return str(resolved)


def warn(message: str) -> None:
    print(f"sslam: warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- records
def now_ms() -> int:
    return int(time.time() * 1000)


def new_record(run_name: str, tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
               link_checkpoint: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Everything one run should hold, as plain JSON: what a publisher has not confirmed yet stays in it."""
    key = uuid.uuid4().hex
    return {"key": key, "run_name": run_name, "run_id": run_id, "start_time": now_ms(),
            "tags": {**{str(k): str(v) for k, v in (tags or {}).items()}, RUN_KEY_TAG: key},
            "params": {k: str(v)[:MAX_PARAM_LENGTH] for k, v in _flatten(params or {}).items()},
            "link_checkpoint": link_checkpoint, "created": run_id is not None, "tags_sent": False,
            "params_sent": not params, "metrics": [], "artifacts": [], "status": None, "end_time": None,
            "terminated": False}


def record_done(record: dict[str, Any]) -> bool:
    return (record["created"] and record["tags_sent"] and record["params_sent"] and not record["metrics"]
            and not record["artifacts"] and (record["status"] is None or record["terminated"]))


def read_pending(path: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(path.read_text()).get("runs", []))
    except (OSError, ValueError, AttributeError):
        return []


def save_pending(path: Path, record: dict[str, Any]) -> None:
    """Put `record` (replacing an older copy of itself) into the job folder's pending file."""
    write_pending(path, [run for run in read_pending(path) if run.get("key") != record["key"]] + [record])


def write_pending(path: Path, runs: list[dict[str, Any]]) -> None:
    if runs:
        atomic_write_json(path, {"version": 1, "runs": runs})
    else:
        path.unlink(missing_ok=True)


def pending_files(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob(PENDING_NAME)))
    return sorted(set(found))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# --------------------------------------------------------------------------------------------- job runs
class JobTracker:
    """Context manager for one job's run record; every method is a no-op when tracking is off, and none ever
    raises because of the store.

    with JobTracker(tracking_file, "stage2-SSLAM", tags={...}, params={...}, job_dir=OUT, publisher=P) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=10)
        tracker.log_artifact("metrics.json")

    `publisher(info)` makes the Publisher that sends the record (None, or a study whose tracking.json says
    `deferred`: the record waits in the job folder for `sslam track replay`). `live=True` sends as the job runs
    (metrics every SSLAM_TRACKING_FLUSH_SECONDS); `live=False` sends nothing before `flush()` or the exit.
    `link_checkpoint` (an evaluation run): the publisher tags the run with the pretraining run of that checkpoint.
    """

    def __init__(self, tracking_file: str | Path | None, run_name: str, tags: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None, job_dir: str | Path | None = None, live: bool = True,
                 link_checkpoint: str | None = None, publisher=None) -> None:
        self.info = resolve_tracking(tracking_file)
        self.run_name, self.live = run_name, live
        self.pending_path = Path(job_dir) / PENDING_NAME if job_dir is not None else None
        self.record = new_record(run_name, tags, params, link_checkpoint)
        sends = self.info is not None and publisher is not None and not self.info.get("deferred")
        self.publisher: Publisher | None = publisher(self.info) if sends else None
        self._flush_every = float(os.environ.get(FLUSH_ENV, DEFAULT_FLUSH_S))
        self._last_flush = time.monotonic()
        self._gave_up = False

    @property
    def enabled(self) -> bool:
        """Tracking was asked for (a URI is configured)."""
        return self.info is not None

    @property
    def active(self) -> bool:
        """Tracking is on and the store has answered so far."""
        return self.publisher is not None and self.publisher.failure is None

    @property
    def logged(self) -> bool:
        """Everything asked for so far is in the store."""
        return self.enabled and record_done(self.record)

    def __enter__(self) -> "JobTracker":
        if self.live:
            self.flush()
        return self

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        timestamp = now_ms()
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue  # NaN, inf and non-numbers stay in metrics.jsonl only
            self.record["metrics"].append([str(key), float(value), timestamp, int(step or 0)])
        due = time.monotonic() - self._last_flush >= self._flush_every
        if self.live and self.publisher is not None and (due or len(self.record["metrics"]) >= 1000):
            self.flush()

    def set_params(self, params: dict[str, Any]) -> None:
        self.record["params"] = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in _flatten(params).items()}
        self.record["params_sent"] = not self.record["params"]

    def log_artifact(self, path: str | Path) -> None:
        if self.enabled and Path(path).exists():
            self.record["artifacts"].append(str(Path(path).resolve()))

    def flush(self) -> bool:
        """Send what is buffered; False (and the record kept in the job folder) when it could not be sent."""
        self._last_flush = time.monotonic()
        if not self.enabled:
            return False
        if self.publisher is None:      # deferred: the job never imports a tracker; `sslam track replay` sends it
            self._save()
            return False
        if self.active:
            try:
                self.publisher.send(self.record)
                return True
            except Exception as error:  # TrackingUnavailable, or anything else a tracker throws: never the job's end
                if self.publisher.failure is None:
                    self.publisher.failure = first_line(error)
        self._give_up()
        return False

    def _give_up(self) -> None:
        if not self._gave_up:
            self._gave_up = True
            kept = f"kept in {self.pending_path}" if self.pending_path else "not kept (no job folder)"
            warn(f"tracking at {self.info['uri']} unavailable ({self.publisher.failure}); the job continues "
                 f"untracked, what it logs is {kept} for `sslam track replay`")
        self._save()

    def _save(self) -> None:
        if self.pending_path is None:
            return
        try:
            save_pending(self.pending_path, self.record)
        except OSError as error:  # a full disk must not cost the result either
            warn(f"cannot write {self.pending_path}: {error}")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type else "FINISHED")

    def end(self, status: str) -> None:
        """FINISHED, FAILED, or KILLED (a job stopped to be resumed: the resumed job makes a run of its own)."""
        if not self.enabled:
            return
        self.record.update(status=status, end_time=now_ms())
        self.flush()  # keeps the record pending in the job folder when the store does not answer
