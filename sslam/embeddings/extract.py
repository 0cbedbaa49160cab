"""`sslam extract`: frozen encoder features for many audio files (docs/embeddings.md).

Inputs are files, folders (searched recursively by extension) and file lists (`--files-from`, one path per
line, relative to the list's folder). Every input gets a key: its path relative to `--root` (default: the
common folder of the inputs), so same-named files in different folders (Speech Commands' `yes/0a2b.wav`,
`no/0a2b.wav`) never collide. Files are decoded in DataLoader workers, their windows batched on the device
(optionally under bf16 autocast), and each result is written as soon as it is ready:

* `--format npy`: OUT/<key minus its extension>.npy, and OUT/extract_index.json with the settings and
  one entry per key (shape, num_frames, real_time_patches, num_windows, truncated; or why it was skipped);
* `--format hdf5`: one HDF5 file OUT, one dataset per key (groups follow the key's folders), the same
  entries as attributes, the settings and skipped files as attributes of the file.

A re-run with the same settings skips the keys already written (different settings are refused: use
another --out, or --overwrite). Unreadable or silent files are skipped and recorded; the command fails only
when nothing could be extracted. Clips are embedded whole by windows (sslam.embeddings); `--long-audio
truncate` keeps the first window only, and says so.

Granularities (D = encoder width, N = P·F_p patch tokens over the P time patches the windows span):
  all        (1+N, D)  the scene vector (CLS, pooled over windows) first, then every patch token
  frame      (N, D)    patch tokens only, time-major
  utterance  (D,)      the scene vector
  timestamp  (T, D)    one vector per 160 ms time patch holding audio (mean over frequency patches)
For a clip that fits one window, all/frame/utterance equal the official EAT/SSLAM extractor's output.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sslam.audio.front_end import FrontEndConfig, load_raw_fbank
from sslam.embeddings.api import DTYPES, GRANULARITIES, LONG_AUDIO, Embedder, load_encoder
from sslam.runtime.device import resolve_device
from sslam.runtime.errors import AudioError, SslamError
from sslam.runtime.io import atomic_path, atomic_write_json
from sslam.runtime.progress import Progress

AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "ogg")
INDEX_NAME = "extract_index.json"
OUTPUT_FORMATS = ("npy", "hdf5")
INDEX_EVERY_S = 30.0  # how often the npy index is rewritten during a run (a killed run redoes at most this)


# ---------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class AudioInput:
    path: Path
    key: str  # the path relative to the root, with "/" separators and its extension


def collect_inputs(paths: list[Path], files_from: Path | None = None, extensions=AUDIO_EXTENSIONS,
                   root: Path | None = None) -> list[AudioInput]:
    """Files, folders (recursive, by extension) and a file list -> unique inputs with their keys, in order."""
    wanted = {e.lower().lstrip(".") for e in extensions}
    files: list[Path] = []
    bases: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in wanted)
            if not found:
                raise SslamError(f"no audio files ({', '.join('*.' + e for e in sorted(wanted))}) under {path}")
            files += found
            bases.append(path)
        elif path.is_file():
            files.append(path)
            bases.append(path.parent)
        else:
            raise SslamError(f"no such file or folder: {path}")
    if files_from is not None:
        try:
            lines = files_from.read_text().splitlines()
        except OSError as error:
            raise SslamError(f"cannot read the file list {files_from}: {error}") from error
        # Listed files that do not exist are kept: they are recorded as skipped like unreadable ones.
        files += [files_from.parent / line.strip() for line in lines if line.strip() and not line.startswith("#")]
        bases.append(files_from.parent)
    if not files:
        raise SslamError("no inputs: give audio files, folders or --files-from LIST")
    absolute = [Path(os.path.abspath(p)) for p in files]  # abspath, not resolve: keep symlinked names
    base = Path(os.path.abspath(root)) if root else Path(os.path.commonpath([os.path.abspath(b) for b in bases]))
    inputs, seen = [], set()
    for path in absolute:
        if path in seen:
            continue
        seen.add(path)
        try:
            key = path.relative_to(base).as_posix()
        except ValueError:
            raise SslamError(f"{path} is not under --root {base}") from None
        inputs.append(AudioInput(path, key))
    return inputs


def npy_name(key: str) -> str:
    return str(Path(key).with_suffix(".npy").as_posix())


def check_npy_names(inputs: list[AudioInput]) -> None:
    """a.wav and a.flac in one folder would write the same a.npy."""
    owners: dict[str, list[str]] = {}
    for item in inputs:
        owners.setdefault(npy_name(item.key), []).append(item.key)
    clashes = [keys for keys in owners.values() if len(keys) > 1]
    if clashes:
        shown = "; ".join(" and ".join(keys) for keys in clashes[:5])
        raise SslamError(f"{len(clashes)} output name(s) would be shared: {shown} (use --format hdf5, which keeps "
                         "extensions in its keys)")


# ---------------------------------------------------------------------------------------------- outputs
class NpyWriter:
    """OUT/<key>.npy files, each written atomically, and OUT/extract_index.json."""

    def __init__(self, out: Path, settings: dict[str, Any], overwrite: bool) -> None:
        self.out, self.settings, self.index_path = out, settings, out / INDEX_NAME
        self.files: dict[str, dict] = {}
        if self.index_path.is_file() and not overwrite:
            try:
                previous = json.loads(self.index_path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise SslamError(f"{self.index_path} is unreadable ({error}); pass --overwrite to start again") from error
            check_settings(previous.get("settings"), settings, out)
            self.files = previous.get("files", {})
        self._last_flush = time.monotonic()

    def done(self, key: str) -> bool:
        entry = self.files.get(key, {})
        return "features" in entry and (self.out / entry["features"]).is_file()

    def write(self, key: str, source: Path, features: np.ndarray, info: dict[str, Any]) -> None:
        name = npy_name(key)
        with atomic_path(self.out / name) as temporary, open(temporary, "wb") as stream:
            np.save(stream, features)
        self.files[key] = {"source": str(source), "features": name, **info}
        if time.monotonic() - self._last_flush > INDEX_EVERY_S:
            self.flush()

    def skip(self, key: str, source: Path, reason: str) -> None:
        self.files[key] = {"source": str(source), "skipped": reason}

    def flush(self) -> None:
        atomic_write_json(self.index_path, {"settings": self.settings, "files": self.files})
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()


class Hdf5Writer:
    """One HDF5 file: a dataset per key (attributes: source, shape info, complete=True written last)."""

    def __init__(self, path: Path, settings: dict[str, Any], overwrite: bool) -> None:
        import h5py

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.file = h5py.File(path, "w" if overwrite else "a")
        except OSError as error:
            raise SslamError(f"cannot open {path} as HDF5 ({error}); pass --overwrite to start again") from error
        if "settings" in self.file.attrs:
            try:
                check_settings(json.loads(self.file.attrs["settings"]), settings, path)
            except SslamError:
                self.file.close()
                raise
        self.file.attrs["settings"] = json.dumps(settings)
        self.skipped: dict[str, str] = json.loads(self.file.attrs.get("skipped", "{}"))

    def done(self, key: str) -> bool:
        return key in self.file and bool(self.file[key].attrs.get("complete", False))

    def write(self, key: str, source: Path, features: np.ndarray, info: dict[str, Any]) -> None:
        if key in self.file:  # an incomplete dataset of a killed run
            del self.file[key]
        dataset = self.file.create_dataset(key, data=features)
        for name, value in {"source": str(source), **info}.items():
            dataset.attrs[name] = value
        dataset.attrs["complete"] = True
        self.skipped.pop(key, None)

    def skip(self, key: str, source: Path, reason: str) -> None:
        self.skipped[key] = reason

    def flush(self) -> None:
        self.file.attrs["skipped"] = json.dumps(self.skipped)
        self.file.flush()

    def close(self) -> None:
        self.flush()
        self.file.close()


def check_settings(previous: dict | None, settings: dict[str, Any], out: Path) -> None:
    if previous is None or previous == settings:
        return
    changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
    shown = ", ".join(f"{k} {previous.get(k)!r} -> {settings.get(k)!r}" for k in changed)
    raise SslamError(f"{out} holds features extracted with other settings ({shown}); choose another --out "
                     "or pass --overwrite")


# ---------------------------------------------------------------------------------------------- extraction
class _DecodedAudio(Dataset):
    """Decodes one file per item, in the DataLoader's workers: (index, raw fbank or None, error or None)."""

    def __init__(self, paths: list[Path], front_end: FrontEndConfig) -> None:
        self.paths, self.front_end = paths, front_end

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, load_raw_fbank(self.paths[index], self.front_end), None
        except AudioError as error:
            return index, None, str(error)


def _as_list(batch: list) -> list:
    return batch


def extract_files(model: Embedder, inputs: list[AudioInput], writer: NpyWriter | Hdf5Writer,
                  granularity: str = "all", num_workers: int = 0, batch_size: int = 16,
                  show_progress: bool | None = None) -> dict[str, int]:
    """Embed every input and hand the results to `writer`; returns counts of written/skipped/truncated."""
    if granularity not in GRANULARITIES:
        raise SslamError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    loader = DataLoader(_DecodedAudio([item.path for item in inputs], model.front_end), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_as_list)
    counts = {"written": 0, "skipped": 0, "truncated": 0}
    progress = Progress(len(inputs), "extract", unit="clip", bar=show_progress)
    try:
        for batch in loader:
            decoded = []
            for index, fbank, error in batch:
                item = inputs[index]
                if fbank is None:
                    writer.skip(item.key, item.path, error)
                    counts["skipped"] += 1
                    print(f"sslam extract: skipped: {error}", file=sys.stderr)  # the error names the file
                else:
                    decoded.append((item, fbank))
            clips = model.embed_fbanks([fbank for _, fbank in decoded], warn_truncation=False)
            for (item, _), clip in zip(decoded, clips):
                features = clip.granularity(granularity)
                writer.write(item.key, item.path, features, {
                    "shape": list(features.shape), "num_frames": clip.num_frames,
                    "real_time_patches": clip.real_time_patches, "num_windows": clip.num_windows,
                    "truncated": clip.truncated})
                counts["written"] += 1
                if clip.truncated:
                    counts["truncated"] += 1
                    if counts["truncated"] == 1:
                        print(f"sslam extract: warning: {item.path} ({clip.num_frames} frames) is longer than the "
                              f"window ({model.window} frames) and only its start is embedded (--long-audio "
                              "truncate); --long-audio window embeds whole clips", file=sys.stderr)
            progress.update(len(batch))
    finally:
        progress.close()
        writer.close()
    if counts["truncated"]:
        print(f"sslam extract: warning: {counts['truncated']} clip(s) were truncated to {model.window} frames",
              file=sys.stderr)
    return counts


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("checkpoint", help="checkpoint file, hf:OWNER/NAME[@REV][:FILE] or model folder "
                                           "(docs/checkpoints.md)")
    parser.add_argument("audio", nargs="*", type=Path, help="audio files and folders (searched recursively)")
    parser.add_argument("--files-from", type=Path, default=None,
                        help="text file with one audio path per line (relative to the list's folder)")
    parser.add_argument("--root", type=Path, default=None, help="keys are paths relative to this folder "
                                                               "(default: the inputs' common folder)")
    parser.add_argument("--extensions", default=",".join(AUDIO_EXTENSIONS), help="searched in folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder (npy) or .h5 file (hdf5)")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="npy")
    parser.add_argument("--overwrite", action="store_true", help="re-extract keys already in --out")
    parser.add_argument("--granularity", choices=GRANULARITIES, default="all")
    parser.add_argument("--target-length", type=int, default=None,
                        help="window in frames, a multiple of 16 (default: what the checkpoint was trained with, "
                             "else 1024)")
    parser.add_argument("--hop-length", type=int, default=None, help="frames between windows (default: the window)")
    parser.add_argument("--long-audio", choices=LONG_AUDIO, default="window",
                        help="window: embed clips longer than the window whole; truncate: keep the first window")
    parser.add_argument("--norm-mean", type=float, default=None, help="default: what the checkpoint records")
    parser.add_argument("--norm-std", type=float, default=None, help="default: what the checkpoint records")
    parser.add_argument("--which", choices=["student", "teacher"], default="student",
                        help="student (what the official extractor and fine-tuning use) or EMA teacher")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="bfloat16: autocast (GPU)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips decoded together = windows per forward")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="decoding processes (default: 0 on the CPU, where the encoder needs every core; "
                             "up to 4 with a GPU)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="interactive bar (default: when stderr is a terminal); log lines are always written")
    parser.add_argument("--num-heads", type=int, default=None, help="foreign files only (default: width/64)")
    parser.add_argument("--num-mel-bins", type=int, default=None, help="foreign files only (default: 128)")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)  # before anything slow: a missing GPU is one line
    workers = args.num_workers
    if workers is None:  # benchmarks/extract_throughput.py: on a CPU, workers only take cores from the encoder
        workers = 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)
    if args.batch_size < 1 or workers < 0:
        raise SslamError("--batch-size must be >= 1 and --num-workers >= 0")
    inputs = collect_inputs(args.audio, args.files_from, args.extensions.split(","), args.root)
    if args.format == "npy":
        check_npy_names(inputs)
    model = load_encoder(args.checkpoint, args.which, device=str(device), window=args.target_length,
                         hop=args.hop_length, long_audio=args.long_audio, batch_size=args.batch_size,
                         dtype=args.dtype, norm_mean=args.norm_mean, norm_std=args.norm_std,
                         num_heads=args.num_heads, num_mel_bins=args.num_mel_bins)
    settings = {"checkpoint": str(args.checkpoint), "which": args.which, "granularity": args.granularity,
                "window": model.window, "hop": model.hop, "long_audio": args.long_audio,
                "norm_mean": model.settings.norm_mean, "norm_std": model.settings.norm_std, "dtype": args.dtype,
                "freq_patches": model.encoder.config.freq_patches, "patch_ms": model.patch_ms}
    writer = (NpyWriter if args.format == "npy" else Hdf5Writer)(args.out, settings, args.overwrite)
    todo = [item for item in inputs if not writer.done(item.key)]
    if len(todo) < len(inputs):
        print(f"{len(inputs) - len(todo)} of {len(inputs)} file(s) already extracted in {args.out}")
    counts = extract_files(model, todo, writer, args.granularity, workers, args.batch_size, args.progress)
    print(f"wrote {counts['written']} feature set(s) to {args.out} ({counts['skipped']} skipped, "
          f"{len(inputs) - len(todo)} already there)")
    return 0 if counts["written"] or len(todo) < len(inputs) else 1


__all__ = ["AudioInput", "Hdf5Writer", "NpyWriter", "collect_inputs", "extract_files"]
