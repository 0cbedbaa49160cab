"""Time of `sslam tables` (with the paired bootstrap) on a synthetic study the size of the paper's.

Writes metrics.json + predictions.npz for every job of the full study (config/config.yaml's 13
benchmarks × 6 models (random, stage1 and the four variants) × 3 seeds × 2 regimes; the AudioSet
benchmarks score the ~18k-clip, 527-class evaluation set), then runs the tables command on them
with config/config.yaml's table specs and times it, and times one AudioSet job's bootstrap alone.
The predictions are random scores with a model-dependent signal: the timing does not depend on them.

    PYTHONPATH=. .venv/bin/python benchmarks/tables_significance.py --replicates 1000

`--scale 0.1` shrinks every test set tenfold for a quick run. Needs ~6 GB of free disk at full size
(the AudioSet predictions: 72 files of 76 MB), in a temporary folder removed afterwards unless
--workdir is given. The last line printed is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sslam.runtime.configuration import load_yaml
from sslam.tables.aggregate import make_tables, read_result
from sslam.tables.significance import Bootstrap, SignificanceConfig, weighted_metric

# name: (test clips, classes, metric, folds, polyphony bins) — sizes as the paper's Appendix B describes
# them, rounded (SPASS, IDMT and URBAN-SED test splits of a few thousand clips).
BENCHMARKS = {
    "as2m": (18000, 527, "map", 1, False), "as20k": (18000, 527, "map", 1, False),
    "esc50": (2000, 50, "accuracy", 5, False), "ks1": (3081, 12, "accuracy", 1, False),
    "ks2": (11005, 35, "accuracy", 1, False),
    **{f"spass_{scene}": (1500, 28, "map", 1, False) for scene in ("square", "park", "waterfront", "street", "market")},
    "idmt_desed_fl": (1500, 10, "map", 1, False), "urbansed": (2000, 10, "map", 1, False),
    "polyphony": (4000, 60, "map", 1, True),
}
MODELS = {"random": 0.2, "stage1": 1.0, "MB-UA": 1.05, "MB-PMA": 1.1, "MB-UA-PMA": 1.1, "SSLAM": 1.15}
BINS = ["{2,3}", "{4,5}", "{6,7}", "{8,9}", "{10,11}", "{12,13}", "{14+}"]


def test_set(rng, clips: int, classes: int, metric: str):
    if metric == "accuracy":
        labels = rng.integers(0, classes, clips)
        targets = np.zeros((clips, classes), np.float32)
        targets[np.arange(clips), labels] = 1.0
        return targets
    # AudioSet-like imbalance: class rates from a Zipf law, ~2 labels per clip, every class present.
    rates = 1.0 / np.arange(1, classes + 1) ** 0.8
    rates *= 2.0 / rates.sum()
    targets = (rng.random((clips, classes)) < rates).astype(np.float32)
    targets[rng.integers(0, clips, classes), np.arange(classes)] = 1.0
    return targets


def write_job(folder: Path, benchmark: str, regime: str, model: str, seed: int, targets, scores, metric, rounds, bins):
    folder.mkdir(parents=True, exist_ok=True)
    ones = np.ones((targets.shape[0], 1), np.float32)
    values = [weighted_metric(metric, targets[rounds == r], scores[rounds == r], ones[rounds == r])[0]
              for r in np.unique(rounds)]
    record = {"benchmark": benchmark, "regime": regime, "variant": model, "seed": seed, "metric": metric,
              "value": float(np.mean(values)), "num_test_clips": int(targets.shape[0]),
              "predictions": "predictions.npz"}
    arrays = dict(clip_id=np.asarray([f"c{i}" for i in range(targets.shape[0])]), targets=targets, scores=scores,
                  round=rounds)
    if bins is not None:
        arrays["bin"] = bins
        record["per_bin"] = {b: {"value": float(weighted_metric(metric, targets[bins == b], scores[bins == b],
                                                                 ones[bins == b])[0]), "clips": int((bins == b).sum())}
                             for b in np.unique(bins)}
    np.savez(folder / "predictions.npz", **arrays)
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder / "metrics.json"


def generate(root: Path, scale: float, seeds: list[int]) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for benchmark, (clips, classes, metric, folds, binned) in BENCHMARKS.items():
        clips = max(int(clips * scale), 10 * folds)
        targets = test_set(rng, clips, classes, metric)
        rounds = np.asarray([str(1 + i % folds) for i in range(clips)]) if folds > 1 else np.full(clips, "main")
        bins = np.asarray([BINS[i % len(BINS)] for i in range(clips)]) if binned else None
        for model, signal in MODELS.items():
            for seed in seeds:
                for regime in ("linear", "finetune"):
                    noise = rng.standard_normal(targets.shape, dtype=np.float32)
                    scores = (signal * targets + noise).astype(np.float32)
                    files.append(write_job(root / model / benchmark / regime / f"seed{seed}", benchmark, regime,
                                           model, seed, targets, scores, metric, rounds, bins))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each test set's clips")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per job")
    parser.add_argument("--workdir", help="keep the generated study here instead of a temporary folder")
    args = parser.parse_args()
    config = load_yaml(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.workdir or scratch)
        started = time.perf_counter()
        files = generate(root / "eval", args.scale, list(range(args.seeds)))
        generated = time.perf_counter() - started
        audioset = [read_result(p) for p in files if "/as20k/linear/" in str(p)]
        started = time.perf_counter()
        Bootstrap(SignificanceConfig(replicates=args.replicates)).add("as20k", "linear", audioset)
        one_group = time.perf_counter() - started
        started = time.perf_counter()
        written = make_tables(config, files, root / "tables", replicates=args.replicates)
        tables = time.perf_counter() - started
        started = time.perf_counter()
        make_tables(config, files, root / "tables-off", replicates=0)
        without = time.perf_counter() - started
        print(json.dumps({
            "jobs": len(files), "replicates": args.replicates, "scale": args.scale, "seeds": args.seeds,
            "audioset_clips": int(BENCHMARKS["as20k"][0] * args.scale), "audioset_classes": BENCHMARKS["as20k"][1],
            "generate_s": round(generated, 1), "tables_s": round(tables, 1), "tables_without_significance_s":
            round(without, 1), "one_audioset_group_s": round(one_group, 1), "one_audioset_job_s":
            round(one_group / len(audioset), 2), "files_written": len(written),
        }))


if __name__ == "__main__":
    main()
