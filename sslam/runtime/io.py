"""Atomic file writes: the one place that knows how a file is replaced so that a reader never sees half of it.

Every writer of a result the workflow or a later run reads (manifests, skip reports, HDF5 shards,
metrics.json, training snapshots, checkpoints, code records) goes through `atomic_path`: the content is
written to a temporary file in the target's folder, flushed to disk, and renamed over the target. A job
killed at any moment leaves either the old complete file or the new complete file, never a mixture.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sslam.runtime.errors import DiskFullError, OutputPathError, SslamError

_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_path(target: str | Path, keep_previous: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; when the block succeeds, fsync it and rename it over `target`.

    `keep_previous` receives the version being replaced (e.g. `last.prev.pt`), so that a crash between the
    two renames still leaves one complete file. On any error the temporary file is removed and the target
    is left untouched.
    """
    target = Path(target)
    if target.is_dir():  # os.replace would fail only after the whole content was written
        raise OutputPathError(errno.EISDIR, f"cannot write {target}: it is a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:  # one line instead of a traceback; nothing was touched yet
        if error.errno in _FULL:
            raise DiskFullError(error.errno, f"no space left on the device (or quota) for {target}; "
                                "nothing was written") from error
        raise OutputPathError(error.errno, f"cannot write {target}: {error.strerror or error}") from error
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        _fsync_file(temporary)
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes it private; give it normal permissions
        if keep_previous is not None and target.exists():
            os.replace(target, keep_previous)
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.errno in _FULL and not isinstance(error, DiskFullError):
            # One line instead of a traceback; the target (or its previous version) is untouched.
            raise DiskFullError(error.errno, f"no space left on the device (or quota) while writing {target}; "
                                f"{'the previous version was kept' if target.exists() else 'nothing was written'}"
                                ) from error
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


# The list of what the last `atomic_folder` set of a folder holds, written last into the set itself.
SET_RECORD = ".sslam-set.json"


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; when the block succeeds, the staging folder becomes `target`
    by one rename, so a reader sees the whole old set of files or the whole new one, never a mixture, and a
    command killed at any moment leaves the old set as it was (plus a hidden `.NAME.*.tmp` folder, removed by
    the next successful run).

    Files in `target` that no earlier set of ours wrote (another job's outputs, the user's files) are carried
    into the new folder by hard link (a copy across file systems); the files of the previous set (listed in its
    SET_RECORD) that the new set no longer has are dropped with it. On any error the staging folder is removed
    and `target` is untouched."""
    target = Path(target)
    if target.is_symlink() and target.is_dir():
        target = target.resolve()          # swap the folder the link points to; the link stays valid
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and not target.is_dir():
            raise OutputPathError(errno.ENOTDIR, f"cannot write the folder {target}: a file of that name is in the way")
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    except OutputPathError:
        raise
    except OSError as error:
        if error.errno in _FULL:
            raise DiskFullError(error.errno, f"no space left on the device (or quota) for {target}; "
                                "nothing was written") from error
        raise OutputPathError(error.errno, f"cannot write {target}: {error.strerror or error}") from error
    swapping = False
    try:
        yield staging
        swapping = True
        written = sorted(entry.name for entry in staging.iterdir())
        if target.is_dir():
            ours = set(_set_record(target))
            for entry in target.iterdir():
                if entry.name != SET_RECORD and entry.name not in ours and not (staging / entry.name).exists():
                    _link_or_copy(entry, staging / entry.name)
        atomic_write_json(staging / SET_RECORD, {"files": written})
        _fsync_directory(staging)
        if target.is_dir():
            retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, retired)     # an empty folder is replaced; between the renames `target` is absent
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
        _fsync_directory(target.parent)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, SslamError):
            if not swapping and error.errno not in _FULL:
                raise               # the caller's own error, from inside the block
            if error.errno in _FULL:
                raise DiskFullError(error.errno, f"no space left on the device (or quota) while writing {target}; "
                                    "the previous version was kept") from error
            raise OutputPathError(error.errno, f"cannot replace {target}: {error.strerror or error}; the previous "
                                  "version was kept") from error
        raise
    for leftover in target.parent.iterdir():  # staging folders of killed runs
        if leftover.name.startswith(f".{target.name}.") and leftover.suffix in (".tmp", ".old") and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _set_record(folder: Path) -> list[str]:
    """The files the last atomic_folder set of `folder` holds ([] without a readable record)."""
    try:
        files = json.loads((folder / SET_RECORD).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in files if isinstance(name, str)]


def _link_or_copy(source: Path, target: Path) -> None:
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True, copy_function=link)
    elif source.is_symlink():
        os.symlink(os.readlink(source), target)
    else:
        link(str(source), str(target))


def read_text(path: str | Path, what: str, error: type[SslamError] = SslamError) -> str:
    """The UTF-8 text of a file the user named, or `error` in one line: missing (`WHAT not found: PATH`), a
    folder, unreadable (permissions...) or not text (a binary file), never a traceback."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not a text file (byte {problem.start} is not UTF-8); is this the {what}?") from problem
    except OSError as problem:
        raise error(f"cannot read {what} {path}: {problem.strerror or problem}") from problem


def missing_file(path: str | Path, what: str) -> str:
    """Why `path` is not a readable file, in words: a folder, or not there."""
    return f"{what} {path} is a folder, not a file" if Path(path).is_dir() else f"{what} not found: {path}"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Pretty JSON with a final newline; NaN/inf are refused (JSON has none, and they would hide a bug)."""
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX needs the directory entry itself flushed)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
