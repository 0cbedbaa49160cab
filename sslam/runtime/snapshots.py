"""Exact-resume state shared by pretraining and downstream training: random streams, snapshot files that are
written atomically and read without running code, and the stop signals of a cluster's scheduler.

Files. A job keeps its state in `OUT/state/last.pt`; every write goes to a temporary file that is fsync'ed and
renamed over it, the replaced version kept as `last.prev.pt` (`sslam.runtime.io.atomic_path`), so a kill at any moment
leaves a complete file. Snapshots hold only tensors and plain Python containers (random states included), so
they are read with `torch.load(weights_only=True)`: a file that carries any other object (a planted pickle that
would run code) is refused with one line naming the file and the object, never executed and never silently
replaced by the previous snapshot. Only a damaged file (truncated, bad bytes) falls back to `last.prev.pt`.

Signals. SLURM sends SIGUSR1 ahead of the time limit (`--signal=B:USR1@<seconds>`) and SIGTERM on preemption or
`scancel`. Inside `StopSignals` both only set a flag; the training loops look at it at every step boundary,
write their state and raise `Preempted`, and the command exits with `PREEMPTED_EXIT_CODE` so that the job is
retried and resumes (docs/evaluation.md, "Preemption").
"""
from __future__ import annotations

import logging
import os
import pickle
import pickletools
import random
import shutil
import signal
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslam.runtime.errors import SslamError, first_line
from sslam.runtime.io import atomic_path

log = logging.getLogger(__name__)

STATE_DIR, LAST, PREVIOUS = "state", "last.pt", "last.prev.pt"
# sysexits' EX_TEMPFAIL, "temporary failure, the user is invited to retry": the job stopped on a signal after
# writing its state; running the same command again resumes it.
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = ("SIGUSR1", "SIGTERM")


class SnapshotError(SslamError, ValueError):
    """A snapshot is unreadable, foreign, or carries an object that is not plain data."""


class HostileSnapshotError(SnapshotError):
    """A snapshot carries an object that would run code when unpickled; it is never loaded."""


class Preempted(Exception):
    """The job stopped at a step boundary on a stop signal, after writing its resumable state."""


# ---------------------------------------------------------------------------------------------- random state
def capture_rng_state(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every global random stream (python, numpy, torch CPU, CUDA) as tensors and plain numbers, plus `extra`
    (e.g. a loop's own generators, as `torch.Generator.get_state()` tensors)."""
    version, internal, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state.update(extra or {})
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["internal"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- files
def state_paths(out_dir: str | Path) -> tuple[Path, Path]:
    """(OUT/state/last.pt, OUT/state/last.prev.pt)."""
    folder = Path(out_dir) / STATE_DIR
    return folder / LAST, folder / PREVIOUS


def atomic_torch_save(obj: Any, path: str | Path, keep_previous: str | Path | None = None) -> None:
    """torch.save to `path` so that a crash at any moment leaves a complete file at `path` or at
    `keep_previous` (which receives the version being replaced)."""
    with atomic_path(path, keep_previous=keep_previous) as temporary:
        torch.save(obj, temporary)


def save_state(out_dir: str | Path, snapshot: dict[str, Any]) -> Path:
    """Write `snapshot` as OUT/state/last.pt, keeping the replaced one as last.prev.pt."""
    last, previous = state_paths(out_dir)
    atomic_torch_save(snapshot, last, keep_previous=previous)
    return last


def discard_state(out_dir: str | Path) -> None:
    shutil.rmtree(Path(out_dir) / STATE_DIR, ignore_errors=True)


def _pickle_globals(data: bytes) -> list[str]:
    """module.name of every global a raw pickle refers to, found by reading its opcodes (nothing runs)."""
    names, strings = [], []
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.append(str(argument).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(argument, str):
                strings.append(argument)
    except Exception:  # noqa: BLE001  (a damaged pickle: whatever was read so far is all there is)
        pass
    return names


def code_objects(path: Path) -> list[str]:
    """The objects of `path` that `torch.load(weights_only=True)` does not accept as plain data."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001  (a damaged archive has no readable pickle to judge)
            return []
    try:
        return _pickle_globals(path.read_bytes())
    except OSError:
        return []


def load_snapshot(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU. SnapshotError, one line, for a file that carries an
    object other than tensors and plain containers (HostileSnapshotError) or that cannot be read."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        _refuse_code(path)
        raise SnapshotError(f"{path} is unreadable (truncated or corrupt): not a torch archive")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        _refuse_code(path)
        raise SnapshotError(f"{path} is unreadable (truncated or corrupt): {first_line(error)}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as error:
        raise SnapshotError(f"{path} is unreadable (truncated or corrupt): {first_line(error)}") from None


def _refuse_code(path: Path) -> None:
    objects = code_objects(path)
    if objects:
        # States of sslam <= 0.1 pickled numpy's random state: refused all the same, but said.
        older = " (numpy objects: a state written by an older sslam? remove it to start fresh)" \
            if all(name.startswith("numpy.") for name in objects) else ""
        raise HostileSnapshotError(f"refusing {path}: it holds a code-running object ({', '.join(objects)}); "
                                   f"a snapshot may hold only tensors and plain data{older}")


def load_latest(out_dir: str | Path, check: Callable[[Path, Any], None]) -> Any | None:
    """The newest usable snapshot of OUT/state (`check(path, content)` raises SnapshotError for a foreign
    one), or None when there is none. A damaged or foreign last.pt is reported and last.prev.pt used instead;
    a file holding a code-running object stops the search: SnapshotError, whatever the other file holds."""
    last, previous = state_paths(out_dir)
    candidates = [p for p in (last, previous) if p.exists()]
    if not candidates:
        return None
    problems = []
    for path in candidates:
        try:
            snapshot = load_snapshot(path)
            check(path, snapshot)
        except HostileSnapshotError:
            raise
        except SnapshotError as error:
            problems.append(str(error))
            log.warning("%s; trying the previous snapshot", error)
            continue
        if path == previous:
            log.warning("resuming from the previous snapshot %s", path)
        return snapshot
    raise SnapshotError("no usable snapshot: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- identity
def job_mismatch(recorded: dict[str, Any] | None, expected: dict[str, Any]) -> str | None:
    """Why a snapshot's job record ({"fingerprint", "settings"}) is not this job's, or None when it is."""
    if not isinstance(recorded, dict):
        return "it records no job identity (written by an older sslam)"
    if recorded.get("fingerprint") != expected["fingerprint"]:
        return f"code fingerprint {recorded.get('fingerprint')} -> {expected['fingerprint']}"
    changed = _differences(recorded.get("settings"), expected["settings"])
    if not changed:
        return None
    more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
    return "settings changed: " + ", ".join(changed[:5]) + more


def _differences(before: Any, now: Any, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(now, dict):
        found = []
        for key in sorted(set(before) | set(now), key=str):
            name = f"{where}.{key}" if where else str(key)
            if key not in before or key not in now:
                found.append(f"{name} {'added' if key not in before else 'removed'}")
            else:
                found.extend(_differences(before[key], now[key], name))
        return found
    if isinstance(before, (list, tuple)) and isinstance(now, (list, tuple)):
        before, now = list(before), list(now)
    return [] if before == now else [f"{where} {before} -> {now}"]


# ---------------------------------------------------------------------------------------------- signals
class StopSignals:
    """While active, SIGUSR1 and SIGTERM set `requested` instead of ending the process (the loops stop at the
    next step boundary). The previous handlers come back on exit. A no-op outside the main thread."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, number: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(number).name
            # One line in the job log, from the handler itself: the loop may be inside a long step.
            os.write(2, f"sslam: received {self.received}; stopping at the next step boundary\n".encode())

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
