"""Loader throughput: the HDF5 cache (FbankDataset) versus decode + fbank per item (OnTheFlyDataset,
what the official loader does), on the same clips with the same DataLoader settings, in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/loader_throughput.py --clips 64 --workers 0

Prints clips/s for both loaders and their ratio (the goal is >= 20x), plus the DataLoader's transfer
ceiling: the rate for items of the same shape that cost nothing to make. With workers > 0 every batch
crosses a process boundary, and on a small busy machine that hand-over, not the HDF5 read, bounds the
cached loader. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from sslam.data.cache import build_shard
from sslam.data.datasets import FbankDataset, OnTheFlyDataset, normalisation_stats
from sslam.data.synthetic import write_unlabeled_clips


class FreeItems(Dataset):
    """Items of the given shape that cost nothing to make: measures the DataLoader hand-over alone."""

    def __init__(self, length: int, shape: tuple[int, ...]) -> None:
        self.length, self.shape = length, shape

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: int) -> torch.Tensor:
        return torch.zeros(self.shape)


def clips_per_second(dataset: Dataset, batch_size: int, workers: int, epochs: int) -> float:
    """Items/s over `epochs` full passes, after one warm-up batch (worker start-up is not loader throughput)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    next(iter(loader))
    items = 0
    started = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            items += len(batch)
    return items / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64, help="number of clips")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--sample-rate", type=int, default=32000, help="sample rate of the generated files")
    parser.add_argument("--format", choices=["wav", "flac"], default="flac", help="audio file format")
    parser.add_argument("--target-length", type=int, default=1024, help="frames per item")
    parser.add_argument("--batch-size", type=int, default=12, help="the official per-GPU batch")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers, the same for both loaders")
    parser.add_argument("--cache-epochs", type=int, default=5, help="passes over the cache (it is fast)")
    parser.add_argument("--on-the-fly-epochs", type=int, default=1, help="passes decoding audio (it is slow)")
    args = parser.parse_args()
    # Same single intra-op thread for both loaders (DataLoader workers use one thread anyway).
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        manifest_path = write_unlabeled_clips(folder / "clips", args.clips, args.seconds, args.sample_rate, args.format)
        shard = build_shard(manifest_path, folder / "shard.h5", target_length=args.target_length).path
        mean, std = normalisation_stats([shard])
        cached = FbankDataset([shard], mean, std, labelled=False)
        on_the_fly = OnTheFlyDataset(manifest_path, args.target_length, mean, std)
        cache_rate = clips_per_second(cached, args.batch_size, args.workers, args.cache_epochs)
        on_the_fly_rate = clips_per_second(on_the_fly, args.batch_size, args.workers, args.on_the_fly_epochs)
        ceiling = clips_per_second(FreeItems(len(cached), tuple(cached[0].shape)), args.batch_size, args.workers,
                                   args.cache_epochs)

    ratio = cache_rate / on_the_fly_rate
    figures = {
        "benchmark": "loader_throughput",
        "clips": args.clips, "clip_seconds": args.seconds, "sample_rate": args.sample_rate, "format": args.format,
        "target_length": args.target_length, "batch_size": args.batch_size, "workers": args.workers,
        "cache_clips_per_second": round(cache_rate, 1), "on_the_fly_clips_per_second": round(on_the_fly_rate, 1),
        "transfer_ceiling_clips_per_second": round(ceiling, 1), "speedup": round(ratio, 1), "goal_speedup": 20, "goal_met": ratio >= 20,
        "torch": torch.__version__,
    }
    print(f"HDF5 cache : {cache_rate:8.1f} clips/s")
    print(f"on the fly : {on_the_fly_rate:8.1f} clips/s   (decode + resample + fbank per item)")
    print(f"ceiling    : {ceiling:8.1f} clips/s   (DataLoader hand-over of free items, {args.workers} workers)")
    print(f"speed-up   : {ratio:8.1f}x   (goal >= 20x: {'met' if ratio >= 20 else 'NOT met'})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
