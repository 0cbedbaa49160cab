"""Extraction throughput: `sslam extract`'s pipeline (decode + resample + fbank in DataLoader workers, windows
batched through the encoder, one .npy per clip) in clips/s, for several worker counts in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/extract_throughput.py --clips 32 --workers 0 2
    PYTHONPATH=. .venv/bin/python benchmarks/extract_throughput.py --model tiny --clips 128 --workers 0 2

`--model vit-b` (default) is the released EAT/SSLAM size (random weights: the speed does not depend on them);
`--model tiny` makes the encoder nearly free, so the rate is the decoding pipeline's own. Each count is
timed over the whole `extract_files` call, worker start-up included, as a user meets it, and split into the
shares of encoding, writing (atomic .npy files, fsync'ed) and waiting for decoded batches. The machine's
load average is printed too: on a shared machine the figures move with it. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from sslam.data.synthetic import write_unlabeled_clips
from sslam.runtime.device import resolve_device
from sslam.embeddings.api import Embedder
from sslam.model.config import EncoderConfig
from sslam.model.checkpoints.export import random_encoder
from sslam.embeddings.extract import NpyWriter, collect_inputs, extract_files
from sslam.model.checkpoints.settings import InputSettings

class Stopwatch:
    """Seconds spent inside the wrapped callables (the rest of a run is waiting for decoded batches)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        return timed


MODELS = {"vit-b": EncoderConfig(),
          "tiny": EncoderConfig(embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0, max_time_patches=64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (AudioSet: 10 s)")
    parser.add_argument("--sample-rate", type=int, default=32000, help="of the generated files (resampled to 16 kHz)")
    parser.add_argument("--format", choices=["wav", "flac"], default="flac")
    parser.add_argument("--model", choices=sorted(MODELS), default="vit-b")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    device = resolve_device(args.device)
    config = MODELS[args.model]
    model = Embedder(random_encoder(config), InputSettings(target_length=1024), batch_size=args.batch_size,
                     dtype=args.dtype).to(device)
    rates, shares = {}, {}
    encode = model.embed_fbanks
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        write_unlabeled_clips(folder / "clips", args.clips, args.seconds, args.sample_rate, args.format)
        inputs = collect_inputs([folder / "clips" / "audio"])
        for workers in args.workers:
            watch = Stopwatch()
            writer = NpyWriter(folder / f"out-{workers}", {"workers": workers}, overwrite=True)
            writer.write = watch.wrap("write", writer.write)
            model.embed_fbanks = watch.wrap("encode", encode)
            started = time.perf_counter()
            counts = extract_files(model, inputs, writer, "utterance", workers, args.batch_size, show_progress=False)
            elapsed = time.perf_counter() - started
            assert counts["written"] == len(inputs), counts
            rates[workers] = len(inputs) / elapsed
            busy = sum(watch.seconds.values())
            shares[workers] = {**{k: round(v / elapsed, 3) for k, v in watch.seconds.items()},
                               "waiting_for_decoding": round((elapsed - busy) / elapsed, 3)}
    base = rates[args.workers[0]]
    for workers, rate in rates.items():
        print(f"{workers} worker(s): {rate:7.2f} clips/s   ({rate / base:.2f}x the {args.workers[0]}-worker rate)   "
              f"time shares {shares[workers]}")
    print(json.dumps({"benchmark": "extract_throughput", "model": args.model, "clips": args.clips,
                      "clip_seconds": args.seconds, "sample_rate": args.sample_rate, "format": args.format,
                      "batch_size": args.batch_size, "device": str(device), "dtype": args.dtype,
                      "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                      "load_average_1min": round(os.getloadavg()[0], 2),
                      "clips_per_second": {str(w): round(r, 2) for w, r in rates.items()},
                      "time_shares": {str(w): s for w, s in shares.items()}, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
