"""What the per-clip Fletcher-32 checksum costs a training read: one (T, F) float16 clip at a time, the way
FbankDataset reads, from the same data stored with and without the filter, in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/checksum_read_cost.py --clips 256

The last line is one JSON object (clips/s both ways and their ratio).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def clips_per_second(path: Path, passes: int) -> float:
    with h5py.File(path, "r") as shard:
        fbank = shard["fbank"]
        order = np.random.default_rng(0).permutation(len(fbank))
        started = time.perf_counter()
        for _ in range(passes):
            for row in order:
                fbank[row]
        return passes * len(order) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--target-length", type=int, default=1024)
    parser.add_argument("--mel-bins", type=int, default=128)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    data = np.random.default_rng(0).standard_normal((args.clips, args.target_length, args.mel_bins)).astype(np.float16)
    with tempfile.TemporaryDirectory() as scratch:
        rates = {}
        for name, checksum in (("plain", False), ("fletcher32", True)):
            path = Path(scratch) / f"{name}.h5"
            with h5py.File(path, "w") as shard:
                shard.create_dataset("fbank", data=data, chunks=(1, args.target_length, args.mel_bins),
                                     fletcher32=checksum)
            clips_per_second(path, 1)  # warm the page cache: both runs then read from memory
            rates[name] = clips_per_second(path, args.passes)
    figures = {"plain_clips_per_s": rates["plain"], "fletcher32_clips_per_s": rates["fletcher32"],
               "fletcher32_over_plain": rates["fletcher32"] / rates["plain"], "clips": args.clips}
    for key, value in figures.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
