"""The exact-resume state of an evaluation job (`sslam finetune` / `sslam probe`).

`OUT/state/last.pt` (+ `last.prev.pt`, written through `sslam.runtime.snapshots`, read with weights_only) holds:

    format, version      "sslam-evaluation-state", 1
    job                  {"fingerprint": code fingerprint, "settings": benchmark, regime, seed, variant, backbone
                          (checkpoint path, weights, size and mtime of the file), benchmark config section,
                          max_steps, normalisation, shard files, round names, device type}
    finished             one record per finished round: round name, classes, test clip ids, targets and scores
                         (tensors), bins, selection, steps, epochs, num_train, and every selection's targets,
                         scores and record (`selections`)
    round_index          the round in progress
    round_state          its {"fit": Fitter.state_dict(), "selection": policy state}, or None between rounds
    log_lines            how many metrics.jsonl lines belong to the state (later ones are dropped on resume)
    resumes              how many times the job was resumed so far

It is written every `checkpoint_every` steps, after every round and on SIGUSR1/SIGTERM; a later run of the same
job (same identity) continues from it, any other state is discarded with one log line. Once metrics.json is
written the state is removed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sslam.evaluation.protocols import Round, RoundResult
from sslam.runtime.snapshots import SnapshotError, discard_state, job_mismatch, load_latest, save_state

log = logging.getLogger(__name__)

FORMAT, VERSION = "sslam-evaluation-state", 1


def file_identity(path: str | Path) -> dict[str, Any]:
    """A file as the state records it: a changed size or modification time means another file."""
    path = Path(path)
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _check(path: Path, snapshot: Any) -> None:
    if not isinstance(snapshot, dict) or snapshot.get("format") != FORMAT:
        raise SnapshotError(f"{path} is not an sslam evaluation state")


def outcome_record(classes: Sequence[str], result: RoundResult) -> dict[str, Any]:
    return {"round": result.round.name, "classes": list(classes), "clip_ids": list(result.clip_ids or []),
            "targets": torch.from_numpy(np.ascontiguousarray(result.targets)),
            "scores": torch.from_numpy(np.ascontiguousarray(result.scores)),
            "bins": None if result.bins is None else np.asarray(result.bins).tolist(),
            "selection": result.selection, "steps": result.steps, "epochs": result.epochs,
            "num_train": result.num_train,
            "selections": {name: {"record": kept["record"],
                                  "targets": torch.from_numpy(np.ascontiguousarray(kept["targets"])),
                                  "scores": torch.from_numpy(np.ascontiguousarray(kept["scores"]))}
                           for name, kept in result.selections.items()}}


def outcome_from_record(record: dict[str, Any], round_: Round) -> tuple[list[str], RoundResult]:
    if record["round"] != round_.name:
        raise SnapshotError(f"the saved round {record['round']!r} is not the planned round {round_.name!r}")
    bins = None if record["bins"] is None else np.asarray(record["bins"])
    return record["classes"], RoundResult(round_, record["targets"].numpy(), record["scores"].numpy(), bins,
                                          record["selection"], record["steps"], record["epochs"],
                                          record["num_train"], record["clip_ids"],
                                          {name: {"record": kept["record"], "targets": kept["targets"].numpy(),
                                                  "scores": kept["scores"].numpy()}
                                           for name, kept in record.get("selections", {}).items()})


@dataclass
class EvaluationState:
    """The job's state in memory; `save` writes it, `open` finds the one to continue from."""

    out: Path
    job: dict[str, Any]
    finished: list[dict[str, Any]] = field(default_factory=list)
    round_state: dict[str, Any] | None = None
    log_lines: int = 0
    resumes: int = 0

    @classmethod
    def open(cls, out: str | Path, job: dict[str, Any]) -> "EvaluationState":
        """The state to continue from in OUT/state (a fresh one when there is none or it is another job's)."""
        out = Path(out)
        snapshot = load_latest(out, _check)
        if snapshot is None:
            return cls(out, job)
        problem = job_mismatch(snapshot.get("job"), job)
        if problem is not None:
            log.warning("discarding the evaluation state in %s (%s); starting fresh", out / "state", problem)
            discard_state(out)
            return cls(out, job)
        state = cls(out, job, snapshot["finished"], snapshot["round_state"], snapshot["log_lines"],
                    snapshot["resumes"] + 1)
        step = state.round_state["fit"]["step"] if state.round_state else 0
        log.info("resuming %s: %d round(s) done, round %d at step %d", out, len(state.finished),
                 len(state.finished) + 1, step)
        return state

    def save(self, round_state: dict[str, Any] | None, log_lines: int) -> None:
        self.round_state, self.log_lines = round_state, log_lines
        save_state(self.out, {"format": FORMAT, "version": VERSION, "job": self.job, "finished": self.finished,
                              "round_index": len(self.finished), "round_state": round_state,
                              "log_lines": log_lines, "resumes": self.resumes})

    def finish_round(self, classes: Sequence[str], result: RoundResult, log_lines: int) -> None:
        self.finished.append(outcome_record(classes, result))
        self.save(None, log_lines)

    def outcomes(self, rounds: Sequence[Round]) -> list[tuple[list[str], RoundResult]]:
        """(classes, result) of every finished round."""
        return [outcome_from_record(record, round_) for record, round_ in zip(self.finished, rounds)]

    def clear(self) -> None:
        discard_state(self.out)
