"""Pretraining snapshots: the project checkpoint plus what an exact resume needs, and which run wrote it.

`DIR/state/last.pt` is a project-format checkpoint (docs/architecture.md) plus the training-state keys
"optimizer", "scheduler", "rng", "data", "config" and "job" (the code fingerprint and the settings that define
the run). Files, atomic writes, the fallback to `last.prev.pt` and the weights_only reading are
`sslam.runtime.snapshots`' (shared with downstream training); this module knows what a pretraining snapshot holds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sslam.runtime.snapshots import (SnapshotError, atomic_torch_save, capture_rng_state, job_mismatch,  # noqa: F401
                                     load_latest, restore_rng_state, save_state, state_paths)

FORMAT, VERSION = "sslam", 1

# Pretraining settings that only decide what is written, never which updates are done: a resumed run may
# change them. Every other recorded setting must match for a snapshot to be resumed.
BOOKKEEPING_KEYS = ("checkpoint_every", "log_every", "num_workers")


def project_checkpoint(*, encoder_config: dict, decoder_config: dict, student: dict, decoder: dict,
                       teacher: dict, stage: int, variant: str | None, step: int,
                       input: dict | None = None) -> dict[str, Any]:
    """The project's own checkpoint dict (docs/architecture.md), without training state. `input` holds the
    {norm_mean, norm_std, target_length} the encoder was trained with (feature extraction reuses them)."""
    return {"format": FORMAT, "version": VERSION,
            "model": {"encoder": encoder_config, "decoder": decoder_config},
            "student": student, "decoder": decoder, "teacher": teacher,
            "stage": stage, "variant": variant, "step": step, "input": input}


def save_training_state(out_dir: str | Path, snapshot: dict[str, Any]) -> Path:
    """Write `snapshot` as DIR/state/last.pt, keeping the replaced one as last.prev.pt."""
    return save_state(out_dir, snapshot)


def _check_pretraining_snapshot(path: Path, snapshot: Any) -> None:
    if not isinstance(snapshot, dict) or snapshot.get("format") != FORMAT or "optimizer" not in snapshot:
        raise SnapshotError(f"{path} is not an sslam training snapshot")


def load_training_state(out_dir: str | Path) -> dict[str, Any] | None:
    """The newest readable snapshot of DIR, or None when DIR has none.

    A damaged last.pt is reported (warning) and last.prev.pt is used instead; if that is damaged or absent
    too, SnapshotError names both files. A snapshot holding a code-running object is refused outright.
    """
    return load_latest(out_dir, _check_pretraining_snapshot)


def run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The recorded config minus the bookkeeping keys: what must be equal for a snapshot to be resumed."""
    pretrain = {k: v for k, v in config.get("pretrain", {}).items() if k not in BOOKKEEPING_KEYS}
    return {**config, "pretrain": pretrain}
