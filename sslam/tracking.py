"""MLflow as an optional side channel: with no tracking URI every job still runs and writes its
own files (`metrics.json`, `metrics.jsonl`), which stay the source of truth.

The URI comes from `MLFLOW_TRACKING_URI`, else from the study's `tracking.json` (written once by
`sslam track init`, which also creates the experiment and the parent study run, so that concurrent
jobs never race to create a fresh SQLite store).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def resolve_tracking(tracking_file: str | Path | None) -> dict[str, Any] | None:
    """Return {"uri", "experiment_id", "parent_run_id"} or None when tracking is off."""
    info: dict[str, Any] = {}
    if tracking_file and Path(tracking_file).is_file():
        info = json.loads(Path(tracking_file).read_text())
    uri = os.environ.get("MLFLOW_TRACKING_URI") or info.get("uri")
    if not uri:
        return None
    info["uri"] = uri
    return info


class JobTracker:
    """Context manager for one job's MLflow child run; every method is a no-op when tracking is off.

    with JobTracker(tracking_file, run_name="stage2-SSLAM", tags={...}, params={...}) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=10)
        tracker.log_artifact("metrics.json")
    """

    def __init__(self, tracking_file: str | Path | None, run_name: str, tags: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None) -> None:
        self.info = resolve_tracking(tracking_file)
        self.run_name, self.tags, self.params = run_name, dict(tags or {}), dict(params or {})
        self._client = None
        self._run_id: str | None = None

    @property
    def active(self) -> bool:
        return self._run_id is not None

    def __enter__(self) -> "JobTracker":
        if self.info is None:
            return self
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.info["uri"])
        experiment_id = self.info.get("experiment_id")
        if experiment_id is None:
            name = self.info.get("experiment", "sslam")
            found = self._client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found else self._client.create_experiment(name)
        tags = {str(k): str(v) for k, v in self.tags.items()}
        tags["mlflow.runName"] = self.run_name
        if self.info.get("parent_run_id"):
            tags["mlflow.parentRunId"] = self.info["parent_run_id"]
        run = self._client.create_run(experiment_id, tags=tags, run_name=self.run_name)
        self._run_id = run.info.run_id
        for key, value in _flatten(self.params).items():
            self._client.log_param(self._run_id, key, str(value)[:6000])
        return self

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and value == value:  # skip NaN and non-numbers
                self._client.log_metric(self._run_id, key, float(value), step=step or 0)

    def log_artifact(self, path: str | Path) -> None:
        if self.active and Path(path).exists():
            self._client.log_artifact(self._run_id, str(path))

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.active:
            self._client.set_terminated(self._run_id, status="FAILED" if exc_type else "FINISHED")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# --- `sslam track` command line -------------------------------------------------------------------
# `init` runs once per study, from a single local workflow rule, before any job logs: concurrent
# processes opening a fresh SQLite store at once can leave it half-migrated for good, while any number
# of writers are safe once one process has created the schema, the experiment and the parent run.

STUDY_ROLE_TAG = "sslam.role"
STUDY_NAME_TAG = "sslam.study"


def default_artifact_location(uri: str) -> str | None:
    """For a local `sqlite:///.../mlflow.db` store, keep artifacts beside the database (MLflow would
    otherwise put them under the current directory); None lets the server decide."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    database = Path(uri[len(prefix):])
    return (database.parent / "artifacts").resolve().as_uri()


def init_study(uri: str, experiment: str, study: str, artifact_location: str | None = None) -> dict[str, Any]:
    """Create (or find) the experiment and the study's parent run; return the tracking.json content."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        experiment_id = client.create_experiment(experiment, artifact_location=artifact_location or default_artifact_location(uri))
    # Re-running init (a fresh tracking.json, a re-run study) must not fork the study into two parents.
    existing = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{STUDY_ROLE_TAG}` = 'study' and tags.`{STUDY_NAME_TAG}` = '{study}'",
        max_results=1,
    )
    if existing:
        parent_run_id = existing[0].info.run_id
    else:
        tags = {STUDY_ROLE_TAG: "study", STUDY_NAME_TAG: study, "mlflow.runName": study}
        parent_run_id = client.create_run(experiment_id, tags=tags, run_name=study).info.run_id
    return {"uri": uri, "experiment": experiment, "experiment_id": experiment_id, "parent_run_id": parent_run_id,
            "study": study}


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
    artifacts = actions.add_parser("artifacts", help="log files as artifacts of a child run of the study")
    artifacts.add_argument("--tracking", required=True, help="the study's tracking.json")
    artifacts.add_argument("--run-name", required=True, help="name of the child run, e.g. tables")
    artifacts.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra run tag")
    artifacts.add_argument("--done", default=None, help="file to write once logged (a workflow target)")
    artifacts.add_argument("paths", nargs="+", help="files to log")


def run(args) -> int:
    from sslam.errors import SslamError

    if args.action == "init":
        uri = os.environ.get("MLFLOW_TRACKING_URI") or args.uri
        try:
            info = init_study(uri, args.experiment, args.study, args.artifact_location)
        except Exception as error:  # MLflow raises many types; a broken store is a user problem
            raise SslamError(f"cannot initialise MLflow tracking at {uri}: {error}") from error
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(info, indent=2) + "\n")
        print(f"tracking: {uri} experiment {info['experiment_id']} parent run {info['parent_run_id']}")
        return 0
    tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep:
            raise SslamError(f"--tag expects KEY=VALUE, got {item!r}")
        tags[key] = value
    missing = [path for path in args.paths if not Path(path).exists()]
    if missing:
        raise SslamError(f"cannot log missing file(s): {', '.join(missing)}")
    with JobTracker(args.tracking, run_name=args.run_name, tags=tags) as tracker:
        for path in args.paths:
            tracker.log_artifact(path)
        logged = tracker.active
    if args.done:
        Path(args.done).write_text(("logged" if logged else "tracking off: nothing logged") + f" {len(args.paths)} file(s)\n")
    return 0
