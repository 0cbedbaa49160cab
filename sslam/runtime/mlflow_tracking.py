"""MLflow, the one tracker the study publishes to: the publisher of run records (`sslam.runtime.tracking`) and
the `sslam track` command. Nothing else in the package imports MLflow, and this module imports it only when
a record is sent.

Publishing never costs a result:

* every MLflow call runs against a deadline (connect, send and receive together, `CALL_TIMEOUT_S`), and a job's
  calls together within a budget (`SSLAM_TRACKING_BUDGET`, default 30 s); a failed call is retried with
  backoff while the job's patience lasts (`SSLAM_TRACKING_PATIENCE`, default 10 s of failed waiting); then
  one warning line, and the job continues with its record kept in its folder;
* SQLite: a lock probe with a short timeout before each call (a locked store fails in seconds, not in
  MLflow's 20-s busy wait);
* publishing is idempotent: a run carries its record's key as a tag, and a record whose run exists already
  (a publisher killed after creating it) continues that run; metric points MLflow already holds are not stored
  twice. `sslam track replay` removes each record from its pending file as soon as MLflow has all of it, and
  one replay at a time holds a lock beside tracking.json (a second one waits, saying so).

`sslam track init` runs once per study, from a single local workflow rule, before any job logs: concurrent
processes opening a fresh SQLite store at once can leave it half-migrated for good, while any number of
writers are safe once one process has created the schema, the experiment and the parent run.
"""
from __future__ import annotations

import fcntl
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from sslam.runtime.errors import SslamError, first_line
from sslam.runtime.io import atomic_write_json
from sslam.runtime.tracking import (CHECKPOINT_TAG, JOB_TAG, PENDING_NAME, PRETRAIN_RUN_TAG, RUN_KEY_TAG,
                                    SQLITE_PREFIX, STUDY_NAME_TAG, JobTracker, TrackingUnavailable,
                                    absolute_store_uri, new_record, now_ms, pending_files, portable_store_uri,
                                    read_pending, record_done, resolve_tracking, save_pending, warn, write_pending)

PATIENCE_ENV, DEFAULT_PATIENCE_S = "SSLAM_TRACKING_PATIENCE", 10.0
BUDGET_ENV, DEFAULT_BUDGET_S = "SSLAM_TRACKING_BUDGET", 30.0
CALL_TIMEOUT_S = 30.0            # one call, whole: a server that drips its answer is given up after this
HTTP_TIMEOUT_S = 5
_HTTP_TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
SQLITE_PROBE_S = 2.0
REPLAY_LOCK_NAME, REPLAY_LOCK_WAIT_S = ".replay.lock", 600.0
GIT_COMMIT_TAG = "mlflow.source.git.commit"
LEGACY_ROLE_TAG = "sslam.role"   # the study's parent run in stores made before the tag vocabulary (2026-12)
# MLflow's limits per log_batch request.
MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH = 1000, 100


def default_artifact_location(uri: str) -> str | None:
    """For a local `sqlite:///.../mlflow.db` store, keep artifacts beside the database (MLflow would
    otherwise put them under the current directory); None lets the server decide."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    database = Path(uri[len(SQLITE_PREFIX):])
    return (database.parent / "artifacts").resolve().as_uri()


# --------------------------------------------------------------------------------------------- calls
class TrackingStore:
    """One process's connection to MLflow: every call within a deadline, retries with backoff, a total budget,
    then given up for the process."""

    def __init__(self, uri: str, patience: float | None = None, budget: float | None = None) -> None:
        self.uri = uri
        self.patience = float(os.environ.get(PATIENCE_ENV, DEFAULT_PATIENCE_S)) if patience is None else patience
        self.budget = float(os.environ.get(BUDGET_ENV, DEFAULT_BUDGET_S)) if budget is None else budget
        self.spent = 0.0                    # seconds of failed waiting so far (against the patience)
        self.used = 0.0                     # seconds inside calls so far (against the budget)
        self.failure: str | None = None     # why the store was given up
        self.failure_code: str | None = None  # MLflow's error code of that failure, if it had one
        self._client = None
        self._sets_http_timeout = False

    @property
    def available(self) -> bool:
        return self.failure is None

    def client(self):
        if self._client is None:
            # Read by MLflow per request: one attempt each (the retries are ours, within the patience).
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            # MLflow logs a full traceback for a locked SQLite store; our one warning line says it.
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.failure is not None:
            raise TrackingUnavailable(self.failure)
        delay = 0.25
        while True:
            started = time.monotonic()
            try:
                if _HTTP_TIMEOUT_ENV not in os.environ or self._sets_http_timeout:
                    self._sets_http_timeout = True
                    os.environ[_HTTP_TIMEOUT_ENV] = str(max(1, math.ceil(min(HTTP_TIMEOUT_S, self._left()))))
                self._probe_sqlite_lock()
                return _within(min(CALL_TIMEOUT_S, self._left()), getattr(self.client(), method), *args, **kwargs)
            except Exception as error:  # MLflow raises MlflowException, requests and SQLAlchemy errors...
                waited = time.monotonic() - started
                self.spent += waited
                # No retry that the patience or the budget could not also wait for.
                if _is_permanent(error) or self.spent + delay >= self.patience or self._left() <= delay:
                    self.failure = f"{method}: {first_line(error)[:300]}"
                    self.failure_code = getattr(error, "error_code", None)
                    raise TrackingUnavailable(self.failure) from error
                time.sleep(delay)
                self.spent += delay
                delay *= 2
            finally:
                self.used += time.monotonic() - started

    def _left(self) -> float:
        return max(0.0, self.budget - self.used)

    def _probe_sqlite_lock(self) -> None:
        """Take and release the write lock with a short timeout: a store locked by another process fails
        here in SQLITE_PROBE_S instead of blocking in MLflow's 20-s busy wait."""
        if not self.uri.startswith(SQLITE_PREFIX):
            return
        database = Path(self.uri[len(SQLITE_PREFIX):])
        if not database.is_file():
            return
        timeout = max(0.05, min(SQLITE_PROBE_S, self.patience - self.spent, self._left()))
        connection = sqlite3.connect(str(database), timeout=timeout, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
        finally:
            connection.close()


class CallTimeout(TimeoutError):
    """An MLflow call did not return within its deadline (the server is too slow, or drips its answer)."""


def _within(seconds: float, function: Callable, *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` with a deadline for the whole call: it runs in a daemon thread, and a call that
    misses its deadline is abandoned (the process never waits for it, not even at exit)."""
    if seconds <= 0:
        raise CallTimeout("the tracking budget of this job is spent")
    answer: queue.Queue = queue.Queue(maxsize=1)

    def target() -> None:
        try:
            answer.put((True, function(*args, **kwargs)))
        except BaseException as error:  # handed to the caller's thread
            answer.put((False, error))

    threading.Thread(target=target, name="sslam-tracking-call", daemon=True).start()
    try:
        ok, value = answer.get(timeout=seconds)
    except queue.Empty:
        raise CallTimeout(f"no answer within {seconds:.0f} s") from None
    if ok:
        return value
    raise value


def _is_permanent(error: Exception) -> bool:
    """A request the store answered with a refusal: retrying cannot help."""
    code = getattr(error, "error_code", None)
    return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                    "PERMISSION_DENIED", "UNAUTHENTICATED") or isinstance(error, CallTimeout)


# --------------------------------------------------------------------------------------------- publishing
class MlflowPublisher:
    """A `sslam.runtime.tracking.Publisher` for the study's MLflow store."""

    def __init__(self, info: dict[str, Any], store: TrackingStore | None = None) -> None:
        self.info = info
        self.store = store or TrackingStore(info["uri"])
        if info.get("initialised") is False:
            self.store.failure = "the store was not initialised (`sslam track init` could not reach it)"

    @property
    def failure(self) -> str | None:
        return self.store.failure

    @failure.setter
    def failure(self, value: str | None) -> None:
        self.store.failure = value

    def send(self, record: dict[str, Any]) -> None:
        send_record(self.store, record, self.info)


def job_tracker(tracking_file: str | Path | None, run_name: str, **options: Any) -> JobTracker:
    """A JobTracker that publishes to MLflow (unless the study defers publishing to `sslam track replay`)."""
    return JobTracker(tracking_file, run_name, publisher=MlflowPublisher, **options)


def ensure_experiment(store: TrackingStore, info: dict[str, Any]) -> str:
    if info.get("experiment_id") is None:
        name = info.get("experiment", "sslam")
        found = store.call("get_experiment_by_name", name)
        info["experiment_id"] = found.experiment_id if found else store.call(
            "create_experiment", name, artifact_location=default_artifact_location(info["uri"]))
    return str(info["experiment_id"])


def _run_tagged(store: TrackingStore, experiment_id: str, tag: str, value: str) -> str | None:
    """The newest run of the experiment whose `tag` is `value` (None when there is none)."""
    if "'" in value:
        return None
    runs = store.call("search_runs", [experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def send_record(store: TrackingStore, record: dict[str, Any], info: dict[str, Any]) -> None:
    """Create the run if needed (or continue the one a killed publisher created) and send what the record still
    holds, in batches, removing each part once MLflow has it; the record keeps the rest when the store gives up."""
    from mlflow.entities import Metric, Param, RunTag

    record["tags"].setdefault(RUN_KEY_TAG, record["key"])   # records kept before runs carried their key
    if not record["created"]:
        experiment_id = ensure_experiment(store, info)
        existing = _run_tagged(store, experiment_id, RUN_KEY_TAG, record["key"])
        if existing:                                         # sent by a publisher that was killed afterwards
            record.update(run_id=existing, created=True, tags_sent=False)
        else:
            tags = dict(record["tags"])
            if record["link_checkpoint"]:
                linked = _run_tagged(store, experiment_id, CHECKPOINT_TAG, record["link_checkpoint"])
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
            warn(f"artifact {path} no longer exists; not logged to run {run_id}")
        record["artifacts"].pop(0)
    if record["status"] is not None and not record["terminated"]:
        store.call("set_terminated", run_id, status=record["status"], end_time=record["end_time"])
        record["terminated"] = True


# --------------------------------------------------------------------------------------------- study
def init_study(uri: str, experiment: str, study: str, artifact_location: str | None = None,
               store: TrackingStore | None = None) -> dict[str, Any]:
    """Create (or find) the experiment and the study's parent run; return the tracking.json content."""
    if uri.startswith(SQLITE_PREFIX):
        Path(uri[len(SQLITE_PREFIX):]).parent.mkdir(parents=True, exist_ok=True)
    store = store or TrackingStore(uri, budget=math.inf)
    found = store.call("get_experiment_by_name", experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        experiment_id = store.call("create_experiment", experiment,
                                   artifact_location=artifact_location or default_artifact_location(uri))
    # Re-running init (a fresh tracking.json, a re-run study) must not fork the study into two parents.
    parent_run_id = None
    for role_tag in (JOB_TAG, LEGACY_ROLE_TAG):
        existing = store.call("search_runs", [experiment_id], max_results=1,
                              filter_string=f"tags.`{role_tag}` = 'study' and tags.`{STUDY_NAME_TAG}` = '{study}'")
        if existing:
            parent_run_id = existing[0].info.run_id
            break
    if parent_run_id is None:
        tags = {JOB_TAG: "study", STUDY_NAME_TAG: study, "mlflow.runName": study}
        parent_run_id = store.call("create_run", experiment_id, tags=tags, run_name=study).info.run_id
    return {"uri": uri, "experiment": experiment, "experiment_id": experiment_id, "parent_run_id": parent_run_id,
            "study": study, "initialised": True}


def _write_tracking_file(out: Path, info: dict[str, Any]) -> None:
    content = {key: value for key, value in info.items() if key != "tracking_file"}
    content["uri"] = portable_store_uri(content["uri"], out.parent)
    atomic_write_json(out, content)


class ReplayLock:
    """One `sslam track replay` at a time per study: a second one waits (saying so), then gives up with one line."""

    def __init__(self, tracking_file: str | Path, wait: float = REPLAY_LOCK_WAIT_S) -> None:
        self.path = Path(tracking_file).resolve().parent / REPLAY_LOCK_NAME
        self.wait = wait
        self._stream = None

    def __enter__(self) -> "ReplayLock":
        self._stream = open(self.path, "a+")
        deadline, said = time.monotonic() + self.wait, False
        while True:
            try:
                fcntl.flock(self._stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._stream.close()
                    raise SslamError(f"another `sslam track replay` of this study is still publishing ({self.path} "
                                     f"is locked after {self.wait:.0f} s); run this one again when it has ended")
                if not said:
                    said = True
                    warn("another `sslam track replay` of this study is publishing; waiting for it to end")
                time.sleep(0.5)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self._stream, fcntl.LOCK_UN)
        self._stream.close()


def replay(tracking_file: str | Path, paths: Iterable[str | Path]) -> tuple[int, int]:
    """Send every pending run under `paths` to the store of `tracking_file`; returns (sent, still pending).
    Pretraining runs go first (evaluation runs link to them), the study's parent run last. Each run leaves its
    pending file as soon as MLflow has all of it."""
    info = resolve_tracking(tracking_file)
    if info is None:
        raise SslamError(f"tracking is off ({tracking_file} names no store and MLFLOW_TRACKING_URI is unset)")
    with ReplayLock(tracking_file):
        store = TrackingStore(info["uri"], budget=math.inf)
        queue_ = [(file, run) for file in pending_files(paths) for run in read_pending(file)]
        order = {"pretrain": 0, "study": 2}
        queue_.sort(key=lambda item: order.get(item[1]["tags"].get(JOB_TAG, item[1]["tags"].get(LEGACY_ROLE_TAG)), 1))
        sent = left = 0
        if queue_ and info.get("initialised") is False:
            try:
                info.update(init_study(info["uri"], info.get("experiment") or "sslam", info.get("study") or "study",
                                       store=store))
                _write_tracking_file(Path(tracking_file), info)
            except TrackingUnavailable:
                pass
        for file, run in queue_:
            if store.available:
                try:
                    if run["created"] and run["run_id"]:
                        _forget_if_unknown(store, run)
                    send_record(store, run, info)
                except TrackingUnavailable:
                    pass
            if record_done(run):
                sent += 1
                write_pending(file, [kept for kept in read_pending(file) if kept.get("key") != run["key"]])
            else:
                left += 1
                save_pending(file, run)    # what was sent of it is remembered
    if not store.available:
        warn(f"MLflow tracking at {info['uri']} unavailable ({store.failure}); {left} run(s) stay pending")
    return sent, left


def _forget_if_unknown(store: TrackingStore, run: dict[str, Any]) -> None:
    """A run created in another store (the URI changed since): create it afresh, with everything."""
    try:
        store.call("get_run", run["run_id"])
    except TrackingUnavailable:
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
            warn("the study's parent run does not exist yet (`sslam track init` could not reach the store); "
                 "run `sslam track replay` first")
            return False
        raise SslamError(f"{tracking_file} names no parent run")
    tags = {JOB_TAG: "study"}
    if git_commit:
        tags.update({GIT_COMMIT_TAG: git_commit, "sslam.git_commit": git_commit})
    record = new_record(info.get("study") or "study", tags, run_id=info["parent_run_id"])
    if config_file:
        record["artifacts"].append(str(Path(config_file).resolve()))
    record.update(status=status, end_time=now_ms())
    store = TrackingStore(info["uri"], budget=math.inf)
    try:
        send_record(store, record, info)
        return True
    except TrackingUnavailable:
        pending = Path(tracking_file).parent / PENDING_NAME
        warn(f"MLflow tracking at {info['uri']} unavailable ({store.failure}); the parent run stays open, "
             f"its end is kept in {pending} for `sslam track replay`")
        save_pending(pending, record)
        return False


# --------------------------------------------------------------------------------------------- CLI
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
    finish.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED"],
                        help="the parent run's end state (default: %(default)s)")
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
        store = TrackingStore(uri, budget=math.inf)
        try:
            info = init_study(uri, args.experiment, args.study, args.artifact_location, store=store)
        except (TrackingUnavailable, OSError) as error:
            store.failure = store.failure or first_line(error)
            # The jobs must not create the store themselves (the half-migration race): they keep their runs
            # pending, and `sslam track replay` initialises the store first.
            warn(f"cannot initialise MLflow tracking at {uri} ({store.failure}); jobs will keep their runs "
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
        tracker = _log_artifacts(args.tracking, "tables", {JOB_TAG: "tables", **_parse_tags(args.tag)}, args.paths,
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
    with job_tracker(tracking, run_name, tags=tags, job_dir=job_dir, live=False) as tracker:
        for path in paths:
            tracker.log_artifact(path)
    return tracker
