"""`sslam extract`: frozen encoder features for audio files, one .npy per file.

Follows the official EAT/SSLAM extractor: the clip is padded with zeros (raw log-mel domain) or
truncated to `--target-length` frames, normalised with (x − mean)/(2·std), and run through the
encoder without masking. Because of the padding, tokens past the clip's real length describe
padding, not audio; the index file records how many time patches are real so users can drop them.

Granularities (D = encoder width, N = time_patches · freq_patches tokens, time-major):
  all        (1+N, D)  CLS first, then every patch token
  frame      (N, D)    patch tokens only
  utterance  (D,)      the CLS output
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from sslam.audio import AUDIOSET_MEAN, AUDIOSET_STD, FrontEndConfig, fit_length, load_raw_fbank, normalise
from sslam.errors import AudioError, SslamError
from sslam.model.checkpoints import load_encoder
from sslam.model.encoder import AudioEncoder

GRANULARITIES = ("all", "frame", "utterance")
INDEX_NAME = "extract_index.json"


@torch.no_grad()
def encode(encoder: AudioEncoder, fbank: torch.Tensor, granularity: str = "all") -> np.ndarray:
    """Normalised fbank (T, F) -> features as described in the module docstring."""
    if granularity not in GRANULARITIES:
        raise SslamError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    device = next(encoder.parameters()).device
    features = encoder.forward_features(fbank.unsqueeze(0).to(device))[0].float().cpu()
    if granularity == "frame":
        features = features[1:]
    elif granularity == "utterance":
        features = features[0]
    return features.numpy()


def extract_files(
    encoder: AudioEncoder,
    audio_paths: list[Path],
    out_dir: Path,
    granularity: str = "all",
    target_length: int = 1024,
    norm_mean: float = AUDIOSET_MEAN,
    norm_std: float = AUDIOSET_STD,
) -> dict[str, dict]:
    """Write out_dir/<stem>.npy for every readable file; unreadable files are skipped and recorded.
    Returns (and writes to out_dir/extract_index.json) one entry per input file."""
    stems = [path.stem for path in audio_paths]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise SslamError(f"several inputs share the output name(s) {duplicates}; extract them into separate folders")
    encoder.grid(target_length)  # fail before any work if the length does not fit the encoder
    front_end = FrontEndConfig(num_mel_bins=encoder.config.num_mel_bins)
    patch = encoder.config.patch_size
    out_dir.mkdir(parents=True, exist_ok=True)
    index: dict[str, dict] = {}
    for path in audio_paths:
        try:
            raw = load_raw_fbank(path, front_end)
        except AudioError as error:
            index[path.stem] = {"source": str(path), "skipped": str(error)}
            print(f"sslam extract: skipped {path}: {error}", file=sys.stderr)
            continue
        fbank = normalise(fit_length(raw, target_length), norm_mean, norm_std).float()
        features = encode(encoder, fbank, granularity)
        np.save(out_dir / f"{path.stem}.npy", features)
        real_frames = min(raw.shape[0], target_length)
        index[path.stem] = {
            "source": str(path),
            "features": f"{path.stem}.npy",
            "shape": list(features.shape),
            "num_frames": int(raw.shape[0]),
            # time patches that contain at least one real (non-padding) frame
            "real_time_patches": math.ceil(real_frames / patch),
        }
    settings = {"granularity": granularity, "target_length": target_length, "norm_mean": norm_mean,
                "norm_std": norm_std, "freq_patches": encoder.config.freq_patches}
    (out_dir / INDEX_NAME).write_text(json.dumps({"settings": settings, "files": index}, indent=2))
    return index


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("checkpoint", help="sslam .pt, fairseq .pt (pre-training or fine-tuned) or safetensors")
    parser.add_argument("audio", nargs="+", type=Path, help="audio files (any rate/channels soundfile reads)")
    parser.add_argument("--out", required=True, type=Path, help="output folder: <stem>.npy + " + INDEX_NAME)
    parser.add_argument("--granularity", choices=GRANULARITIES, default="all")
    parser.add_argument("--target-length", type=int, default=1024, help="frames after pad/truncate (multiple of 16)")
    parser.add_argument("--norm-mean", type=float, default=AUDIOSET_MEAN)
    parser.add_argument("--norm-std", type=float, default=AUDIOSET_STD)
    parser.add_argument("--which", choices=["student", "teacher"], default="student",
                        help="student (what the official extractor and fine-tuning use) or EMA teacher")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-heads", type=int, default=None, help="foreign files only (default: width/64)")
    parser.add_argument("--num-mel-bins", type=int, default=None, help="foreign files only (default: 128)")


def run(args: argparse.Namespace) -> int:
    encoder = load_encoder(args.checkpoint, which=args.which, num_heads=args.num_heads,
                           num_mel_bins=args.num_mel_bins).to(args.device)
    index = extract_files(encoder, list(args.audio), args.out, args.granularity, args.target_length,
                          args.norm_mean, args.norm_std)
    written = sum("features" in entry for entry in index.values())
    print(f"wrote {written} feature file(s) to {args.out} ({len(index) - written} skipped)")
    return 0 if written else 1


__all__ = ["encode", "extract_files"]
