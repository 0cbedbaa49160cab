"""Peak memory of caching one long audio file: it should follow the target length, not the file.

Writes a FLAC file of `--minutes` (10 s of tone, then silence: small on disk), then builds a one-clip
cache shard of it in a fresh subprocess per run and reports that process's peak resident memory
(VmHWM), next to a process that only imports the same modules and one that caches a 10-s clip.

    PYTHONPATH=. .venv/bin/python benchmarks/long_audio_memory.py --minutes 60 --sample-rate 44100 --channels 2

The last line printed is one JSON object with every figure (MiB).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

CHILD = """
import sys
from sslam.data.cache import build_shard
from sslam.data.manifest import Manifest, write_manifest
import pandas as pd
audio, folder, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
if audio != "-":
    manifest = Manifest(pd.DataFrame({"clip_id": ["clip"], "path": [audio], "split": ["unlabeled"]}))
    write_manifest(manifest, folder + "/manifest.tsv")
    report = build_shard(folder + "/manifest.tsv", folder + "/shard.h5", target_length=target)
    assert report.written == 1, report
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]) / 1024)
"""


def write_long_flac(path: Path, minutes: float, sample_rate: int, channels: int) -> Path:
    """10 s of a 440 Hz tone, then silence, written block by block (FLAC keeps the silence tiny)."""
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(10 * sample_rate) / sample_rate)).astype(np.float32)
    with soundfile.SoundFile(str(path), "w", samplerate=sample_rate, channels=channels, format="FLAC",
                             subtype="PCM_16") as stream:
        stream.write(np.repeat(tone[:, None], channels, axis=1))
        left = int(minutes * 60 * sample_rate) - len(tone)
        block = np.zeros((60 * sample_rate, channels), dtype=np.float32)
        while left > 0:
            stream.write(block[:min(left, len(block))])
            left -= len(block)
    return path


def peak_mib(audio: str, folder: Path, target_length: int) -> float:
    result = subprocess.run([sys.executable, "-c", CHILD, audio, str(folder), str(target_length)],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the long file")
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--target-length", type=int, default=1024, help="frames per cached clip")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        short = write_long_flac(folder / "short.flac", 10 / 60, args.sample_rate, args.channels)
        long = write_long_flac(folder / "long.flac", args.minutes, args.sample_rate, args.channels)
        figures = {
            "imports_only_mib": peak_mib("-", folder, args.target_length),
            "ten_second_clip_mib": peak_mib(str(short), folder, args.target_length),
            "long_file_mib": peak_mib(str(long), folder, args.target_length),
            "minutes": args.minutes, "sample_rate": args.sample_rate, "channels": args.channels,
            "target_length": args.target_length,
        }
    figures["long_minus_ten_second_mib"] = figures["long_file_mib"] - figures["ten_second_clip_mib"]
    for key, value in figures.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
