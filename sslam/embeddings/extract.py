"""`sslam extract`: frozen encoder features for many audio files (docs/embeddings.md).

Inputs are files, folders (searched recursively by extension, every format libsndfile decodes by default,
following folder links) and file lists (`--files-from`, one path per line, relative to the list's folder). Every input gets a key: its path relative to `--root` (default: the
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
  cls        (D,)      the scene vector (EAT's name: utterance)
  mean       (D,)      the mean of the patch tokens that hold audio
  patch      (N, D)    patch tokens only, time-major (EAT's name: frame)
  timestamp  (T, D)    one vector per 160 ms time patch holding audio (mean over frequency patches)
For a clip that fits one window, all/patch/cls equal the official EAT/SSLAM extractor's output.
`--layer` picks the hidden state: -1 (default) the last block's output, N block N's (0 = the first block's
input), "4,8,12" several, "all" every one (depth + 1); several layers put a layer axis first: (L, ...).
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

from sslam.audio.front_end import FrontEndConfig, clip_num_frames, load_raw_fbank
from sslam.embeddings.api import DTYPES, GRANULARITIES, LONG_AUDIO, Embedder, load_encoder, token_name
from sslam.runtime.device import resolve_device
from sslam.runtime.errors import AudioError, SslamError
from sslam.runtime.io import atomic_path, atomic_write_json
from sslam.runtime.progress import Progress

# libsndfile's formats (soundfile.available_formats(), what sslam.audio.front_end decodes) -> the file extensions
# they are known by. Left out: MAT4/MAT5 (.mat files are mostly MATLAB data, not audio) and RAW (headerless: it
# needs its sample format given).
FORMAT_EXTENSIONS = {"WAV": ("wav", "wave"), "WAVEX": ("wav",), "AIFF": ("aif", "aiff", "aifc"), "AU": ("au", "snd"),
                     "AVR": ("avr",), "CAF": ("caf",), "FLAC": ("flac",), "HTK": ("htk",), "IRCAM": ("sf",),
                     "MP3": ("mp3",), "NIST": ("nist", "sph"), "OGG": ("ogg", "oga", "opus"), "PAF": ("paf",),
                     "PVF": ("pvf",), "RF64": ("rf64",), "SD2": ("sd2",), "SDS": ("sds",), "SVX": ("8svx", "svx"),
                     "VOC": ("voc",), "W64": ("w64",), "WVE": ("wve",), "XI": ("xi",)}
INDEX_NAME = "extract_index.json"
OUTPUT_FORMATS = ("npy", "hdf5")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def decodable_extensions() -> tuple[str, ...]:
    """Every extension of an audio format this machine's libsndfile decodes (wav, flac, mp3, ogg, oga, opus...)."""
    import soundfile

    available = soundfile.available_formats()
    return tuple(sorted({ext for name, exts in FORMAT_EXTENSIONS.items() if name in available for ext in exts}))


AUDIO_EXTENSIONS = decodable_extensions()
INDEX_EVERY_S = 30.0  # how often the npy index is rewritten during a run (a killed run redoes at most this)


# ---------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class AudioInput:
    path: Path
    key: str  # the path relative to the root, with "/" separators and its extension


def audio_files(folder: Path, wanted: set[str], skipped: dict[str, int]) -> list[Path]:
    """Every file under `folder` with a wanted extension, in sorted order. Folder links are followed (a dataset
    is often assembled from links); one that leads back into a folder already on the way is skipped, and counted
    under "(folder link loop)". Files with other extensions are counted by extension in `skipped`."""
    found: list[Path] = []
    for current, folders, names in os.walk(folder, followlinks=True):
        here = Path(current)
        ancestors = {os.path.realpath(p) for p in [here, *here.parents] if p == folder or folder in p.parents}
        for name in list(folders):
            if (here / name).is_symlink() and os.path.realpath(here / name) in ancestors:
                folders.remove(name)  # a loop: os.walk would descend for ever
                skipped["(folder link loop)"] = skipped.get("(folder link loop)", 0) + 1
        folders.sort()
        for name in names:
            path = here / name
            extension = path.suffix.lower().lstrip(".")
            if extension in wanted and path.is_file():
                found.append(path)
            elif path.is_file():
                key = f".{extension}" if extension else "(no extension)"
                skipped[key] = skipped.get(key, 0) + 1
    return sorted(found)


def collect_inputs(paths: list[Path], files_from: Path | None = None, extensions=AUDIO_EXTENSIONS,
                   root: Path | None = None, skipped: dict[str, int] | None = None) -> list[AudioInput]:
    """Files, folders (recursive, by extension, following folder links) and a file list -> unique inputs with
    their keys, in order. `skipped` receives how many files under the folders were left out, per extension."""
    wanted = {e.lower().strip().lstrip(".") for e in extensions if e.strip()}
    skipped = {} if skipped is None else skipped
    if root is not None and not Path(root).is_dir():
        raise SslamError(f"--root must be a folder (keys are paths relative to it): {root} "
                         f"{'is a file' if Path(root).exists() else 'does not exist'}")
    files: list[Path] = []
    bases: list[Path] = []
    for path in paths:
        if path.is_dir():
            before = dict(skipped)
            found = audio_files(path, wanted, skipped)
            if not found:
                others = sum(skipped.values()) - sum(before.values())
                raise SslamError(f"no audio files ({', '.join('*.' + e for e in sorted(wanted))}) under {path}"
                                 + (f"; {others} file(s) with other extensions (--extensions adds some)" if others
                                    else ""))
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

        if path.is_dir():
            raise SslamError(f"--out {path} is a folder; HDF5 output is one file: give a file name (e.g. "
                             f"{path / 'features.h5'}), or --format npy to write into the folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.file = h5py.File(path, "w" if overwrite else "a")
        except OSError as error:
            if "lock" in str(error).lower() or getattr(error, "errno", None) in (11, 35):  # EAGAIN / EWOULDBLOCK
                raise SslamError(f"{path} is open in another process (another sslam extract writing it?): wait for "
                                 "it to finish, or write to another --out; --overwrite cannot help while it is open"
                                 ) from error
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


# Settings that earlier versions did not record, with the value those versions used: an output written
# before the key existed is compared as if it recorded it.
SETTINGS_BEFORE = {"layers": "last"}


def check_settings(previous: dict | None, settings: dict[str, Any], out: Path) -> None:
    if previous is None:
        return
    previous = {**{k: v for k, v in SETTINGS_BEFORE.items() if k in settings}, **previous}
    if previous == settings:
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


class WindowProgress(Progress):
    """Progress in windows, whose total is corrected as each file's real length becomes known."""

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()


def expected_windows(model: Embedder, path: Path) -> int:
    """The windows a file will give, from its header alone (1 when the header is unreadable: the file is then
    skipped when it is decoded, and the count corrected)."""
    try:
        return model.num_windows(max(1, clip_num_frames(path, model.front_end)))
    except AudioError:
        return 1


def extract_files(model: Embedder, inputs: list[AudioInput], writer: NpyWriter | Hdf5Writer,
                  granularity: str = "all", num_workers: int = 0, batch_size: int = 16,
                  show_progress: bool | None = None) -> dict[str, int]:
    """Embed every input and hand the results to `writer`; returns counts of written/skipped/truncated."""
    token_name(granularity)  # a bad name is one line before any work
    loader = DataLoader(_DecodedAudio([item.path for item in inputs], model.front_end), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_as_list)
    counts = {"written": 0, "skipped": 0, "truncated": 0}
    # Progress counts windows, the unit of work (a 3-min clip is 18 windows, a 1-s clip one), from the files'
    # headers; the count is corrected as each file is decoded, so the ETA stays honest for long files.
    planned = [expected_windows(model, item.path) for item in inputs]
    progress = WindowProgress(sum(planned), "extract", unit="window", bar=show_progress)
    try:
        for batch in loader:
            decoded = []
            for index, fbank, error in batch:
                item = inputs[index]
                if fbank is None:
                    writer.skip(item.key, item.path, error)
                    counts["skipped"] += 1
                    progress.set_total(progress.total - planned[index])  # nothing of it will be encoded
                    print(f"sslam extract: skipped: {error}", file=sys.stderr)  # the error names the file
                else:
                    progress.set_total(progress.total + model.num_windows(fbank.shape[0]) - planned[index])
                    decoded.append((item, fbank))
            clips = model.embed_fbanks([fbank for _, fbank in decoded], warn_truncation=False,
                                       on_windows=progress.update)
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
    parser.add_argument("--extensions", default=",".join(AUDIO_EXTENSIONS),
                        help="comma-separated file extensions read from folders (default: every format this machine's libsndfile decodes: %(default)s)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (npy) or .h5 file (hdf5)")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                        help="default: hdf5 when --out ends in .h5/.hdf5, else npy")
    parser.add_argument("--overwrite", action="store_true", help="re-extract keys already in --out")
    parser.add_argument("--granularity", choices=GRANULARITIES, default="all",
                        help="what of each layer is written: all (1+N, D) = cls then the patch tokens; cls (D,); mean "
                             "(D,) of the patch tokens holding audio; patch (N, D); timestamp (T, D), one vector per "
                             "160 ms; utterance = cls and frame = patch, as EAT names them (default: %(default)s)")
    parser.add_argument("--layer", default="-1",
                        help="which hidden state: -1 the last block's output, N block N's (0 = the first block's "
                             "input), a comma-separated list, or 'all' (depth + 1 layers); several put a layer axis "
                             "first (default: %(default)s)")
    parser.add_argument("--target-length", type=int, default=None,
                        help="window in frames, a multiple of 16 (default: what the checkpoint was trained with, "
                             "else 1024)")
    parser.add_argument("--hop-length", type=int, default=None, help="frames between windows (default: the window)")
    parser.add_argument("--long-audio", choices=LONG_AUDIO, default="window",
                        help="window: embed clips longer than the window whole; truncate: keep the first window (default: "
                             "%(default)s)")
    parser.add_argument("--norm-mean", type=float, default=None, help="default: what the checkpoint records")
    parser.add_argument("--norm-std", type=float, default=None, help="default: what the checkpoint records")
    parser.add_argument("--which", choices=["student", "teacher"], default="student",
                        help="student (what the official extractor and fine-tuning use) or EMA teacher (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N "
                                                         "(default: %(default)s)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="bfloat16: autocast, for GPUs (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="clips decoded together, and windows per forward pass (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="decoding processes (default: 0 on the CPU, where the encoder needs every core; "
                             "up to 4 with a GPU)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="interactive bar (default: when stderr is a terminal); log lines are always written")
    parser.add_argument("--num-heads", type=int, default=None, help="foreign files only (default: width/64)")
    parser.add_argument("--num-mel-bins", type=int, default=None, help="foreign files only (default: 128)")


def choose_format(given: str | None, out: Path) -> str:
    """--format, or what --out says: a name ending in .h5/.hdf5 is an HDF5 file. A .h5 name with --format npy
    is refused: it would be a folder of .npy files that every reader takes for an HDF5 file."""
    looks_hdf5 = out.suffix.lower() in HDF5_SUFFIXES
    if given is None:
        return "hdf5" if looks_hdf5 else "npy"
    if given == "npy" and looks_hdf5:
        raise SslamError(f"--out {out} ends in {out.suffix} but --format npy writes a folder of .npy files: drop "
                         "--format (HDF5 is inferred from the name) or name a folder")
    return given


def layers_setting(model: Embedder) -> str | int | list[int]:
    """How the layers are recorded: "last" for the last block's output (what every earlier version wrote), else
    the layer numbers (0..depth), a list when the outputs have a layer axis."""
    depth = model.encoder.config.depth
    if not model.stacked:
        return "last" if model.layers[0] == depth else model.layers[0]
    return list(model.layers)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)  # before anything slow: a missing GPU is one line
    workers = args.num_workers
    if workers is None:  # benchmarks/extract_throughput.py: on a CPU, workers only take cores from the encoder
        workers = 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)
    if args.batch_size < 1 or workers < 0:
        raise SslamError("--batch-size must be >= 1 and --num-workers >= 0")
    output_format = choose_format(args.format, args.out)
    skipped: dict[str, int] = {}
    inputs = collect_inputs(args.audio, args.files_from, args.extensions.split(","), args.root, skipped)
    if skipped:
        shown = ", ".join(f"{count} {kind}" for kind, count in sorted(skipped.items(), key=lambda kv: -kv[1]))
        print(f"sslam extract: note: left out {sum(skipped.values())} file(s) under the input folders: {shown} "
              "(--extensions chooses what is read)", file=sys.stderr)
    if output_format == "npy":
        check_npy_names(inputs)
    model = load_encoder(args.checkpoint, args.which, device=str(device), window=args.target_length,
                         hop=args.hop_length, long_audio=args.long_audio, batch_size=args.batch_size,
                         dtype=args.dtype, norm_mean=args.norm_mean, norm_std=args.norm_std,
                         num_heads=args.num_heads, num_mel_bins=args.num_mel_bins, layers=args.layer)
    settings = {"checkpoint": str(args.checkpoint), "which": args.which, "granularity": args.granularity,
                "layers": layers_setting(model),
                "window": model.window, "hop": model.hop, "long_audio": args.long_audio,
                "norm_mean": model.settings.norm_mean, "norm_std": model.settings.norm_std, "dtype": args.dtype,
                "freq_patches": model.encoder.config.freq_patches, "patch_ms": model.patch_ms}
    writer = (NpyWriter if output_format == "npy" else Hdf5Writer)(args.out, settings, args.overwrite)
    todo = [item for item in inputs if not writer.done(item.key)]
    if len(todo) < len(inputs):
        print(f"{len(inputs) - len(todo)} of {len(inputs)} file(s) already extracted in {args.out}")
    counts = extract_files(model, todo, writer, args.granularity, workers, args.batch_size, args.progress)
    print(f"wrote {counts['written']} feature set(s) to {args.out} ({counts['skipped']} skipped, "
          f"{len(inputs) - len(todo)} already there)")
    return 0 if counts["written"] or len(todo) < len(inputs) else 1


__all__ = ["AudioInput", "Hdf5Writer", "NpyWriter", "collect_inputs", "extract_files"]
