"""Training snapshots: atomic writes, every random state, and exact resume.

`DIR/state/last.pt` is a project-format checkpoint (docs/architecture.md) plus the training-state keys
"optimizer", "scheduler", "rng", "data" and "config". It is written atomically: to a temporary file in the
same folder, fsync'ed, then renamed over the old one, whose previous version is first kept as
`last.prev.pt`. A reader therefore sees either the old or the new file, never a half-written one; if a file
is damaged anyway (disk full, copied half-way), `load_training_state` falls back to `last.prev.pt` and says so.
"""
from __future__ import annotations

import logging
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslam.io import atomic_path
from sslam.model.checkpoints import CheckpointError

log = logging.getLogger(__name__)

FORMAT, VERSION = "sslam", 1
STATE_DIR, LAST, PREVIOUS = "state", "last.pt", "last.prev.pt"


def atomic_torch_save(obj: Any, path: str | Path, keep_previous: Path | None = None) -> None:
    """torch.save to `path` so that a crash at any moment leaves a complete file at `path` or at
    `keep_previous` (which receives the version being replaced)."""
    with atomic_path(path, keep_previous=keep_previous) as temporary:
        torch.save(obj, temporary)


def capture_rng_state(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every random stream the loop draws from: python, numpy, torch CPU, CUDA (all devices), plus `extra`
    (e.g. the objective's own generator)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state.update(extra or {})
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def project_checkpoint(*, encoder_config: dict, decoder_config: dict, student: dict, decoder: dict,
                       teacher: dict, stage: int, variant: str | None, step: int,
                       input: dict | None = None) -> dict[str, Any]:
    """The project's own checkpoint dict (docs/architecture.md), without training state. `input` holds the
    {norm_mean, norm_std, target_length} the encoder was trained with (feature extraction reuses them)."""
    return {"format": FORMAT, "version": VERSION,
            "model": {"encoder": encoder_config, "decoder": decoder_config},
            "student": student, "decoder": decoder, "teacher": teacher,
            "stage": stage, "variant": variant, "step": step, "input": input}


def state_paths(out_dir: str | Path) -> tuple[Path, Path]:
    folder = Path(out_dir) / STATE_DIR
    return folder / LAST, folder / PREVIOUS


def save_training_state(out_dir: str | Path, snapshot: dict[str, Any]) -> Path:
    """Write `snapshot` as DIR/state/last.pt, keeping the replaced one as last.prev.pt."""
    last, previous = state_paths(out_dir)
    atomic_torch_save(snapshot, last, keep_previous=previous)
    return last


def _read(path: Path) -> dict[str, Any]:
    try:
        # weights_only=False: the snapshot holds numpy/python RNG states and config dicts, and it is a
        # file this project wrote itself.
        snapshot = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path} is unreadable (truncated or corrupt): {error}") from error
    if not isinstance(snapshot, dict) or snapshot.get("format") != FORMAT or "optimizer" not in snapshot:
        raise CheckpointError(f"{path} is not an sslam training snapshot")
    return snapshot


def load_training_state(out_dir: str | Path) -> dict[str, Any] | None:
    """The newest readable snapshot of DIR, or None when DIR has none.

    A damaged last.pt is reported (warning) and last.prev.pt is used instead; if that is damaged or absent
    too, CheckpointError names both files.
    """
    last, previous = state_paths(out_dir)
    candidates = [p for p in (last, previous) if p.exists()]
    if not candidates:
        return None
    problems = []
    for path in candidates:
        try:
            snapshot = _read(path)
        except CheckpointError as error:
            problems.append(str(error))
            log.warning("%s; trying the previous snapshot", error)
            continue
        if path == previous:
            log.warning("resuming from the previous snapshot %s (step %d)", path, snapshot["step"])
        return snapshot
    raise CheckpointError("no usable training snapshot: " + "; ".join(problems))
