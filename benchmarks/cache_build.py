"""Cache build throughput: clips per second per core for AudioSet-like clips (10 s, 32 kHz).

Generates its own synthetic clips in a temporary folder, then builds one HDF5 shard of them in this
process (the build runs on one core; a study builds shards in parallel, one job per core), and
times the front end alone for comparison.

    PYTHONPATH=. .venv/bin/python benchmarks/cache_build.py --clips 32 --format flac

The last line printed is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from sslam.audio.front_end import load_raw_fbank
from sslam.data.cache import build_shard
from sslam.data.manifest import read_manifest
from sslam.data.synthetic import write_unlabeled_clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32, help="number of clips to generate and cache")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--sample-rate", type=int, default=32000, help="sample rate of the generated files")
    parser.add_argument("--format", choices=["wav", "flac"], default="flac", help="audio file format")
    parser.add_argument("--target-length", type=int, default=1024, help="frames per cached clip")
    parser.add_argument("--workdir", help="keep the clips and the shard here instead of a temporary folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.workdir or scratch)
        started = time.perf_counter()
        manifest_path = write_unlabeled_clips(folder / "clips", args.clips, args.seconds, args.sample_rate, args.format)
        generate_seconds = time.perf_counter() - started

        report = build_shard(manifest_path, folder / "shard.h5", target_length=args.target_length)
        shard_megabytes = report.path.stat().st_size / 2**20

        # The front end alone (decode + resample + fbank), same single thread as the build.
        manifest = read_manifest(manifest_path)
        torch.set_num_threads(1)
        started = time.perf_counter()
        for row in range(len(manifest)):
            load_raw_fbank(manifest.audio_path(row))
        front_end_seconds = time.perf_counter() - started

    figures = {
        "benchmark": "cache_build",
        "clips": args.clips, "clip_seconds": args.seconds, "sample_rate": args.sample_rate, "format": args.format,
        "target_length": args.target_length,
        "build_seconds": round(report.seconds, 3),
        "clips_per_second_per_core": round(report.written / report.seconds, 2),
        "ms_per_clip": round(1000 * report.seconds / report.written, 2),
        "front_end_ms_per_clip": round(1000 * front_end_seconds / report.written, 2),
        "shard_megabytes": round(shard_megabytes, 2),
        "megabytes_per_clip": round(shard_megabytes / report.written, 4),
        "generate_seconds": round(generate_seconds, 2),
        "torch": torch.__version__,
    }
    print(f"cached {report.written} clips of {args.seconds:g} s ({args.sample_rate} Hz {args.format}) "
          f"in {report.seconds:.2f} s on one core: {figures['clips_per_second_per_core']} clips/s "
          f"({figures['ms_per_clip']} ms/clip; front end alone {figures['front_end_ms_per_clip']} ms/clip)")
    print(f"shard size {shard_megabytes:.1f} MiB ({figures['megabytes_per_clip']} MiB/clip)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
