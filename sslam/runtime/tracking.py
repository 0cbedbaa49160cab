"""MLflow as an optional side channel: with no tracking URI every job still runs and writes its
own files (`metrics.json`, `metrics.jsonl`), which stay the source of truth.

The URI comes from `MLFLOW_TRACKING_URI`, else from the study's `tracking.json` (written once by
`sslam track init`, which also creates the experiment and the parent study run, so that concurrent
jobs never race to create a fresh SQLite store). A local SQLite store inside the tracking.json's folder is
recorded relative to it (`sqlite:///mlflow.db`), so a moved or copied results folder keeps working.

Tracking never costs a result:

* every MLflow call goes through `TrackingStore.call`: each wait is bounded (HTTP: a 5-s request timeout
  and no urllib3 retries; SQLite: a lock probe with a short timeout before each call) and a failed call
  is retried with exponential backoff while the job's patience lasts (`SSLAM_TRACKING_PATIENCE`, default
  10 s of failed waiting per job); then one warning line, and the job continues untracked;
* a job's tags, params, metrics and artifacts are kept in memory and sent in batches (`log_batch`);
  whatever could not be sent is written to the job folder as `tracking-pending.json` and sent later by
  `sslam track replay` (`sslam track finish` ends the study's parent run);
* evaluation jobs contact the store only after metrics.json is written (`live=False`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from sslam.runtime.errors import SslamError
from sslam.runtime.io import atomic_write_json

PENDING_NAME = "tracking-pending.json"
PATIENCE_ENV, DEFAULT_PATIENCE_S = "SSLAM_TRACKING_PATIENCE", 10.0
FLUSH_ENV, DEFAULT_FLUSH_S = "SSLAM_TRACKING_FLUSH_SECONDS", 30.0
HTTP_TIMEOUT_S = 5
_HTTP_TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
SQLITE_PROBE_S = 2.0
STUDY_ROLE_TAG, STUDY_NAME_TAG = "sslam.role", "sslam.study"
CHECKPOINT_TAG = "sslam.checkpoint"                     # a pretraining run: its checkpoint, relative to the results
PRETRAIN_CHECKPOINT_TAG = "sslam.pretrain_checkpoint"   # an evaluation run: the checkpoint it evaluates
PRETRAIN_RUN_TAG = "pretrain_run_id"                    # an evaluation run: the pretraining run of that checkpoint
GIT_COMMIT_TAG = "mlflow.source.git.commit"
# MLflow's limits per log_batch request.
MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, MAX_PARAM_LENGTH = 1000, 100, 6000
SQLITE_PREFIX = "sqlite:///"


class StoreUnavailable(SslamError):
    """The tracking store did not answer within the job's patience (or refused a request)."""


# --------------------------------------------------------------------------------------------- where
def resolve_tracking(tracking_file: str | Path | None) -> dict[str, Any] | None:
    """Return {"uri", "experiment_id", "parent_run_id", ...} or None when tracking is off. A relative SQLite
    URI is resolved against the tracking.json's folder; MLFLOW_TRACKING_URI wins, as given."""
    info: dict[str, Any] = {}
    if tracking_file and Path(tracking_file).is_file():
        try:
            info = json.loads(Path(tracking_file).read_text())
        except (OSError, ValueError) as error:
            _warn(f"cannot read {tracking_file} ({error}); the job runs untracked")
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


def default_artifact_location(uri: str) -> str | None:
    """For a local `sqlite:///.../mlflow.db` store, keep artifacts beside the database (MLflow would
    otherwise put them under the current directory); None lets the server decide."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    database = Path(uri[len(SQLITE_PREFIX):])
    return (database.parent / "artifacts").resolve().as_uri()


# --------------------------------------------------------------------------------------------- calls
class TrackingStore:
    """One job's connection to MLflow: bounded waits, retries with backoff, then given up for the job."""

    def __init__(self, uri: str, patience: float | None = None) -> None:
        self.uri = uri
        self.patience = float(os.environ.get(PATIENCE_ENV, DEFAULT_PATIENCE_S)) if patience is None else patience
        self.spent = 0.0                    # seconds of failed waiting so far
        self.failure: str | None = None     # why the store was given up
        self.failure_code: str | None = None  # MLflow's error code of that failure, if it had one
        self._client = None
        self._sets_http_timeout = False

    @property
    def available(self) -> bool:
        return self.failure is None

    def client(self):
        if self._client is None:
            # Read by MLflow per request: one attempt each, its timeout set per attempt below (unless the user
            # set one); the retries are ours, within the patience.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            # MLflow logs a full traceback for a locked SQLite store; our one warning line says it.
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.failure is not None:
            raise StoreUnavailable(self.failure)
        delay = 0.25
        while True:
            started = time.monotonic()
            remaining = self.patience - self.spent
            try:
                if _HTTP_TIMEOUT_ENV not in os.environ or self._sets_http_timeout:
                    self._sets_http_timeout = True
                    os.environ[_HTTP_TIMEOUT_ENV] = str(max(1, min(HTTP_TIMEOUT_S, math.ceil(remaining))))
                self._probe_sqlite_lock()
                return getattr(self.client(), method)(*args, **kwargs)
            except Exception as error:  # MLflow raises MlflowException, requests and SQLAlchemy errors...
                self.spent += time.monotonic() - started
                # No retry that the patience could not also wait for: the job's total stays within it.
                if _is_permanent(error) or self.spent + delay >= self.patience:
                    self.failure = f"{method}: {_first_line(error)}"
                    self.failure_code = getattr(error, "error_code", None)
                    raise StoreUnavailable(self.failure) from error
                time.sleep(delay)
                self.spent += delay
                delay *= 2

    def _probe_sqlite_lock(self) -> None:
        """Take and release the write lock with a short timeout: a store locked by another process fails
        here in SQLITE_PROBE_S instead of blocking in MLflow's 20-s busy wait."""
        if not self.uri.startswith(SQLITE_PREFIX):
            return
        database = Path(self.uri[len(SQLITE_PREFIX):])
        if not database.is_file():
            return
        timeout = max(0.05, min(SQLITE_PROBE_S, self.patience - self.spent))
        connection = sqlite3.connect(str(database), timeout=timeout, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
        finally:
            connection.close()


def _is_permanent(error: Exception) -> bool:
    """A request the store answered with a refusal: retrying cannot help."""
    code = getattr(error, "error_code", None)
    return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                    "PERMISSION_DENIED", "UNAUTHENTICATED")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def _warn(message: str) -> None:
    print(f"sslam: warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- records
def _now_ms() -> int:
    return int(time.time() * 1000)


def new_record(run_name: str, tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
               link_checkpoint: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Everything one run should hold, as plain JSON: what `send_record` has not sent yet stays in it."""
    return {"key": uuid.uuid4().hex, "run_name": run_name, "run_id": run_id, "start_time": _now_ms(),
            "tags": {str(k): str(v) for k, v in (tags or {}).items()},
            "params": {k: str(v)[:MAX_PARAM_LENGTH] for k, v in _flatten(params or {}).items()},
            "link_checkpoint": link_checkpoint, "created": run_id is not None, "tags_sent": False,
            "params_sent": not params, "metrics": [], "artifacts": [], "status": None, "end_time": None,
            "terminated": False}


def record_done(record: dict[str, Any]) -> bool:
    return (record["created"] and record["tags_sent"] and record["params_sent"] and not record["metrics"]
            and not record["artifacts"] and (record["status"] is None or record["terminated"]))


def ensure_experiment(store: TrackingStore, info: dict[str, Any]) -> str:
    if info.get("experiment_id") is None:
        name = info.get("experiment", "sslam")
        found = store.call("get_experiment_by_name", name)
        info["experiment_id"] = found.experiment_id if found else store.call(
            "create_experiment", name, artifact_location=default_artifact_location(info["uri"]))
    return str(info["experiment_id"])


def _pretraining_run(store: TrackingStore, experiment_id: str, checkpoint: str) -> str | None:
    if "'" in checkpoint:
        return None
    runs = store.call("search_runs", [experiment_id], filter_string=f"tags.`{CHECKPOINT_TAG}` = '{checkpoint}'",
                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def send_record(store: TrackingStore, record: dict[str, Any], info: dict[str, Any]) -> None:
    """Create the run if needed and send what the record still holds, in batches; the record keeps what
    was not sent when the store gives up (StoreUnavailable)."""
    from mlflow.entities import Metric, Param, RunTag

    if not record["created"]:
        experiment_id = ensure_experiment(store, info)
        tags = dict(record["tags"])
        if record["link_checkpoint"]:
            linked = _pretraining_run(store, experiment_id, record["link_checkpoint"])
            if linked:
                tags[PRETRAIN_RUN_TAG] = linked
        if info.get("parent_run_id") and record["run_id"] is None:
            tags["mlflow.parentRunId"] = info["parent_run_id"]
        tags["mlflow.runName"] = record["run_name"]
        run = store.call("create_run", experiment_id, start_time=record["start_time"], tags=tags,
                         run_name=record["run_name"])
        record.update(run_id=run.info.run_id, created=True, tags_sent=True)
    run_id = record["run_id"]
    if not record["tags_sent"]:
        tags = [RunTag(k, v) for k, v in record["tags"].items()]
        for start in range(0, len(tags), MAX_PARAMS_TAGS_PER_BATCH):
            store.call("log_batch", run_id, tags=tags[start:start + MAX_PARAMS_TAGS_PER_BATCH])
        record["tags_sent"] = True
    if not record["params_sent"]:
        params = [Param(k, v) for k, v in record["params"].items()]
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            store.call("log_batch", run_id, params=params[start:start + MAX_PARAMS_TAGS_PER_BATCH])
        record["params_sent"] = True
    while record["metrics"]:
        chunk = record["metrics"][:MAX_METRICS_PER_BATCH]
        store.call("log_batch", run_id, metrics=[Metric(key, value, timestamp, step)
                                                 for key, value, timestamp, step in chunk])
        del record["metrics"][:len(chunk)]
    while record["artifacts"]:
        path = record["artifacts"][0]
        if Path(path).exists():
            store.call("log_artifact", run_id, path)
        else:
            _warn(f"artifact {path} no longer exists; not logged to run {run_id}")
        record["artifacts"].pop(0)
    if record["status"] is not None and not record["terminated"]:
        store.call("set_terminated", run_id, status=record["status"], end_time=record["end_time"])
        record["terminated"] = True


def read_pending(path: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(path.read_text()).get("runs", []))
    except (OSError, ValueError, AttributeError):
        return []


def save_pending(path: Path, record: dict[str, Any]) -> None:
    """Put `record` (replacing an older copy of itself) into the job folder's pending file."""
    runs = [run for run in read_pending(path) if run.get("key") != record["key"]]
    atomic_write_json(path, {"version": 1, "runs": runs + [record]})


def _write_pending(path: Path, runs: list[dict[str, Any]]) -> None:
    if runs:
        atomic_write_json(path, {"version": 1, "runs": runs})
    else:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- job runs
class JobTracker:
    """Context manager for one job's MLflow child run; every method is a no-op when tracking is off, and
    none ever raises because of the store.

    with JobTracker(tracking_file, run_name="stage2-SSLAM", tags={...}, params={...}, job_dir=OUT) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=10)
        tracker.log_artifact("metrics.json")

    `live=True` sends as the job runs (run created on entry, metrics every SSLAM_TRACKING_FLUSH_SECONDS);
    `live=False` sends nothing before `flush()` or the exit. `link_checkpoint` (an evaluation run): tag the
    run with the id of the pretraining run whose CHECKPOINT_TAG is this path.
    """

    def __init__(self, tracking_file: str | Path | None, run_name: str, tags: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None, job_dir: str | Path | None = None, live: bool = True,
                 link_checkpoint: str | None = None) -> None:
        self.info = resolve_tracking(tracking_file)
        self.run_name, self.live = run_name, live
        self.pending_path = Path(job_dir) / PENDING_NAME if job_dir is not None else None
        self.record = new_record(run_name, tags, params, link_checkpoint)
        self.store = TrackingStore(self.info["uri"]) if self.info is not None else None
        if self.info is not None and self.info.get("initialised") is False:
            self.store.failure = "the store was not initialised (`sslam track init` could not reach it)"
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
        return self.store is not None and self.store.available

    @property
    def logged(self) -> bool:
        """Everything asked for so far is in MLflow."""
        return self.enabled and record_done(self.record)

    def __enter__(self) -> "JobTracker":
        if self.live:
            self.flush()
        return self

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        timestamp = _now_ms()
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue  # NaN, inf and non-numbers stay in metrics.jsonl only
            self.record["metrics"].append([str(key), float(value), timestamp, int(step or 0)])
        due = time.monotonic() - self._last_flush >= self._flush_every
        if self.live and (due or len(self.record["metrics"]) >= MAX_METRICS_PER_BATCH):
            self.flush()

    def log_artifact(self, path: str | Path) -> None:
        if self.enabled and Path(path).exists():
            self.record["artifacts"].append(str(Path(path).resolve()))

    def flush(self) -> bool:
        """Send what is buffered; False (and the record kept pending) when the store does not answer."""
        self._last_flush = time.monotonic()
        if not self.enabled:
            return False
        if self.info.get("deferred"):
            # Deferred tracking (tracking.json "deferred": true): the job never imports MLflow; its run waits
            # in the job folder for the one `sslam track replay` at the end of the study.
            self._save()
            return False
        if self.active:
            try:
                send_record(self.store, self.record, self.info)
                return True
            except Exception as error:  # StoreUnavailable, or anything else MLflow throws: never the job's end
                if self.store.failure is None:
                    self.store.failure = _first_line(error)
        self._give_up()
        return False

    def _give_up(self) -> None:
        if not self._gave_up:
            self._gave_up = True
            kept = f"kept in {self.pending_path}" if self.pending_path else "not kept (no job folder)"
            _warn(f"MLflow tracking at {self.info['uri']} unavailable ({self.store.failure}); the job continues "
                  f"untracked, what it logs is {kept} for `sslam track replay`")
        self._save()

    def _save(self) -> None:
        if self.pending_path is None:
            return
        try:
            save_pending(self.pending_path, self.record)
        except OSError as error:  # a full disk must not cost the result either
            _warn(f"cannot write {self.pending_path}: {error}")

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled:
            return
        self.record.update(status="FAILED" if exc_type else "FINISHED", end_time=_now_ms())
        self.flush()  # keeps the record pending in the job folder when the store does not answer


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# --------------------------------------------------------------------------------------------- study
def init_study(uri: str, experiment: str, study: str, artifact_location: str | None = None,
               store: TrackingStore | None = None) -> dict[str, Any]:
    """Create (or find) the experiment and the study's parent run; return the tracking.json content."""
    if uri.startswith(SQLITE_PREFIX):
        Path(uri[len(SQLITE_PREFIX):]).parent.mkdir(parents=True, exist_ok=True)
    store = store or TrackingStore(uri)
    found = store.call("get_experiment_by_name", experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        experiment_id = store.call("create_experiment", experiment,
                                   artifact_location=artifact_location or default_artifact_location(uri))
    # Re-running init (a fresh tracking.json, a re-run study) must not fork the study into two parents.
    existing = store.call(
        "search_runs", [experiment_id],
        filter_string=f"tags.`{STUDY_ROLE_TAG}` = 'study' and tags.`{STUDY_NAME_TAG}` = '{study}'", max_results=1)
    if existing:
        parent_run_id = existing[0].info.run_id
    else:
        tags = {STUDY_ROLE_TAG: "study", STUDY_NAME_TAG: study, "mlflow.runName": study}
        parent_run_id = store.call("create_run", experiment_id, tags=tags, run_name=study).info.run_id
    return {"uri": uri, "experiment": experiment, "experiment_id": experiment_id, "parent_run_id": parent_run_id,
            "study": study, "initialised": True}


def _write_tracking_file(out: Path, info: dict[str, Any]) -> None:
    content = {key: value for key, value in info.items() if key != "tracking_file"}
    content["uri"] = portable_store_uri(content["uri"], out.parent)
    atomic_write_json(out, content)


def pending_files(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob(PENDING_NAME)))
    return sorted(set(found))


def replay(tracking_file: str | Path, paths: Iterable[str | Path]) -> tuple[int, int]:
    """Send every pending run under `paths` to the store of `tracking_file`; returns (sent, still pending).
    Pretraining runs go first (evaluation runs link to them), the study's parent run last."""
    info = resolve_tracking(tracking_file)
    if info is None:
        raise SslamError(f"tracking is off ({tracking_file} names no store and MLFLOW_TRACKING_URI is unset)")
    store = TrackingStore(info["uri"])
    files = pending_files(paths)
    queue = [(file, run) for file in files for run in read_pending(file)]
    order = {"pretrain": 0, "study": 2}
    queue.sort(key=lambda item: order.get(item[1]["tags"].get("job", item[1]["tags"].get(STUDY_ROLE_TAG)), 1))
    sent = 0
    remaining: dict[Path, list[dict[str, Any]]] = {file: [] for file in files}
    try:
        if queue and info.get("initialised") is False:
            info.update(init_study(info["uri"], info.get("experiment") or "sslam", info.get("study") or "study",
                                   store=store))
            _write_tracking_file(Path(tracking_file), info)
        for file, run in queue:
            if not store.available:
                remaining[file].append(run)
                continue
            try:
                if run["created"] and run["run_id"]:
                    _forget_if_unknown(store, run)
                send_record(store, run, info)
                sent += 1
            except StoreUnavailable:
                remaining[file].append(run)
    finally:
        for file, runs in remaining.items():
            _write_pending(file, runs)
    if not store.available:
        _warn(f"MLflow tracking at {info['uri']} unavailable ({store.failure}); "
              f"{sum(map(len, remaining.values()))} run(s) stay pending")
    return sent, sum(map(len, remaining.values()))


def _forget_if_unknown(store: TrackingStore, run: dict[str, Any]) -> None:
    """A run created in another store (the URI changed since): create it afresh, with everything."""
    try:
        store.call("get_run", run["run_id"])
    except StoreUnavailable:
        if store.failure_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        store.failure = store.failure_code = None
        run.update(run_id=None, created=False, tags_sent=False, params_sent=not run["params"])


def finish_study(tracking_file: str | Path, config_file: str | None, git_commit: str | None,
                 status: str = "FINISHED") -> bool:
    """End the study's parent run with the study config and the git commit attached; False (kept pending
    beside tracking.json) when the store does not answer."""
    info = resolve_tracking(tracking_file)
    if info is None:
        return False
    if not info.get("parent_run_id"):
        if info.get("initialised") is False:
            _warn("the study's parent run does not exist yet (`sslam track init` could not reach the store); "
                  "run `sslam track replay` first")
            return False
        raise SslamError(f"{tracking_file} names no parent run")
    tags = {STUDY_ROLE_TAG: "study"}
    if git_commit:
        tags.update({GIT_COMMIT_TAG: git_commit, "sslam.git_commit": git_commit})
    record = new_record(info.get("study") or "study", tags, run_id=info["parent_run_id"])
    if config_file:
        record["artifacts"].append(str(Path(config_file).resolve()))
    record.update(status=status, end_time=_now_ms())
    store = TrackingStore(info["uri"])
    try:
        send_record(store, record, info)
        return True
    except StoreUnavailable:
        pending = Path(tracking_file).parent / PENDING_NAME
        _warn(f"MLflow tracking at {info['uri']} unavailable ({store.failure}); the parent run stays open, "
              f"its end is kept in {pending} for `sslam track replay`")
        save_pending(pending, record)
        return False


# --------------------------------------------------------------------------------------------- CLI
# `init` runs once per study, from a single local workflow rule, before any job logs: concurrent
# processes opening a fresh SQLite store at once can leave it half-migrated for good, while any number
# of writers are safe once one process has created the schema, the experiment and the parent run.

def add_arguments(parser, command: str) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="create the store, the experiment and the study's parent run once")
    init.add_argument("--uri", required=True,
                      help="tracking URI, e.g. sqlite:///results/demo/mlflow/mlflow.db (MLFLOW_TRACKING_URI wins)")
    init.add_argument("--experiment", required=True, help="MLflow experiment name")
    init.add_argument("--study", required=True, help="study name: the parent run's name")
    init.add_argument("--artifact-location", default=None,
                      help="artifact root of a new experiment (default: beside a local SQLite store)")
    init.add_argument("--out", required=True, help="tracking.json to write ({uri, experiment_id, parent_run_id})")
    init.add_argument("--deferred", action="store_true", help="jobs keep their runs in their folders (no MLflow "
                      "import per job); `sslam track replay` sends them all at once")
    artifacts = actions.add_parser("artifacts", help="log files as artifacts of a child run of the study")
    artifacts.add_argument("--tracking", required=True, help="the study's tracking.json")
    artifacts.add_argument("--run-name", required=True, help="name of the child run, e.g. tables")
    artifacts.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra run tag")
    artifacts.add_argument("--done", default=None, help="file to write once logged (a workflow target)")
    artifacts.add_argument("paths", nargs="+", help="files to log")
    replay_parser = actions.add_parser("replay", help=f"send the runs kept in {PENDING_NAME} files to the store")
    replay_parser.add_argument("--tracking", required=True, help="the study's tracking.json")
    replay_parser.add_argument("paths", nargs="*", help=f"{PENDING_NAME} files or folders searched for them "
                               "(default: the folder above tracking.json's, i.e. the study's results)")
    publish = actions.add_parser("publish", help="the end of a study in one step: log the tables as artifacts, "
                                 "replay every kept run, end the parent run with its config and commit")
    publish.add_argument("--tracking", required=True, help="the study's tracking.json")
    publish.add_argument("--results", required=True, help="the study's results folder (searched for kept runs)")
    publish.add_argument("--config", help="study config file to attach to the parent run")
    publish.add_argument("--git-commit", help="the code's git commit, tagged on the parent run")
    publish.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra tag of the tables run")
    publish.add_argument("--done", required=True, help="file to write afterwards (a workflow target)")
    publish.add_argument("paths", nargs="+", help="the table and figure files to log")
    finish = actions.add_parser("finish", help="end the study's parent run (FINISHED) with its config and commit")
    finish.add_argument("--tracking", required=True, help="the study's tracking.json")
    finish.add_argument("--config", help="study config file to attach to the parent run")
    finish.add_argument("--git-commit", help="the code's git commit, tagged on the parent run")
    finish.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED"])
    finish.add_argument("--done", default=None, help="file to write afterwards (a workflow target)")


def _parse_tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SslamError(f"--tag expects KEY=VALUE, got {item!r}")
        tags[key] = value
    return tags


def run(args) -> int:
    if args.action == "init":
        out = Path(args.out)
        # A relative SQLite URI names a store beside tracking.json, as resolve_tracking reads it back (the
        # workflow's default `sqlite:///mlflow.db` is RESULTS/mlflow/mlflow.db); MLFLOW_TRACKING_URI is
        # MLflow's own setting, so a relative one there means the current folder, as MLflow reads it.
        environment = os.environ.get("MLFLOW_TRACKING_URI")
        uri = absolute_store_uri(environment, Path.cwd()) if environment else absolute_store_uri(args.uri, out.parent)
        store = TrackingStore(uri)
        try:
            info = init_study(uri, args.experiment, args.study, args.artifact_location, store=store)
        except (StoreUnavailable, OSError) as error:
            store.failure = store.failure or _first_line(error)
            # The jobs must not create the store themselves (the half-migration race): they keep their runs
            # pending, and `sslam track replay` initialises the store first.
            _warn(f"cannot initialise MLflow tracking at {uri} ({store.failure}); jobs will keep their runs "
                  "pending until `sslam track replay` can reach it")
            info = {"uri": uri, "experiment": args.experiment, "experiment_id": None, "parent_run_id": None,
                    "study": args.study, "initialised": False}
        info["deferred"] = bool(args.deferred)
        _write_tracking_file(out, info)
        print(f"tracking: {uri} experiment {info['experiment_id']} parent run {info['parent_run_id']}"
              + (" (deferred: runs are sent by `sslam track replay`)" if args.deferred else ""))
        return 0
    if args.action == "replay":
        paths = args.paths or [Path(args.tracking).resolve().parent.parent]
        sent, pending = replay(args.tracking, paths)
        print(f"tracking replay: {sent} run(s) sent, {pending} still pending")
        return 0
    if args.action == "finish":
        finished = finish_study(args.tracking, args.config, args.git_commit, args.status)
        if args.done:
            Path(args.done).write_text(("parent run ended" if finished else "parent run end kept pending") + "\n")
        return 0
    if args.action == "publish":
        tracker = _log_artifacts(args.tracking, "tables", {"stage": "tables", **_parse_tags(args.tag)}, args.paths,
                                 Path(args.done).parent)
        sent = pending = 0
        if tracker.enabled:
            sent, pending = replay(args.tracking, [args.results])
            finish_study(args.tracking, args.config, args.git_commit)
        Path(args.done).write_text(f"tables: {len(args.paths)} file(s); runs sent {sent}, still pending {pending}"
                                   + ("" if tracker.enabled else " (tracking off)") + "\n")
        print(f"tracking publish: {sent} run(s) sent, {pending} still pending")
        return 0
    tracker = _log_artifacts(args.tracking, args.run_name, _parse_tags(args.tag), args.paths,
                             Path(args.done).parent if args.done else Path(args.tracking).parent)
    if args.done:
        state = "logged" if tracker.logged else ("tracking off: nothing logged" if not tracker.enabled else
                                                 f"kept pending in {tracker.pending_path}")
        Path(args.done).write_text(f"{state} {len(args.paths)} file(s)\n")
    return 0


def _log_artifacts(tracking: str, run_name: str, tags: dict[str, str], paths: list[str], job_dir: Path) -> JobTracker:
    missing = [path for path in paths if not Path(path).exists()]
    if missing:
        raise SslamError(f"cannot log missing file(s): {', '.join(missing)}")
    with JobTracker(tracking, run_name=run_name, tags=tags, job_dir=job_dir, live=False) as tracker:
        for path in paths:
            tracker.log_artifact(path)
    return tracker
