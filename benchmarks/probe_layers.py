"""The converged linear probe on every layer of a finished demo's encoders, for two poolings: where in the
network, and under which read-out, does pretraining differ from random init?

    python -m benchmarks.probe_layers results/demo --config config/demo.yaml
    python -m benchmarks.probe_layers results/demo-long --config config/demo-long.yaml --random-seeds 0 1 2

For each encoder (the random-init encoders of `--random-seeds`, Stage 1 and every Stage-2 checkpoint found
under RESULTS/pretrain) it extracts, once per clip, the patch tokens after the patch embedding (L0) and after
every block (L1..Ld: the block outputs, what the encoder returns after its last block), pools them (`mean`
over all patches, `time` = the mean over time of each frequency row), and fits the demo's converged probe
(`sslam.evaluation.logistic`, the benchmark's own `linear` settings: l2 grid, folds, tolerance) on the
benchmark's own rounds (synth_mono: its folds; synth_poly: train -> test). It prints one table per benchmark
(rows: encoder, columns: layer × pooling) and, last, one JSON line with every number. Nothing here chooses a
setting: it reads what each layer carries under the demo's own probe.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sslam.data.config import study_shard_paths
from sslam.data.datasets import FbankDataset, normalisation_stats
from sslam.evaluation.config import BenchmarkConfig
from sslam.evaluation.heads import pool_features
from sslam.evaluation.logistic import Standardiser, choose_l2, fit_logistic
from sslam.evaluation.metrics import score
from sslam.evaluation.protocols import plan_rounds
from sslam.evaluation.training import batch_loader
from sslam.model.checkpoints.read import load_encoder
from sslam.model.encoder import AudioEncoder, EncoderConfig
from sslam.runtime.configuration import from_dict, load_yaml, section

POOLINGS = ("mean", "time")


def encoders(results: Path, config: dict, random_seeds: list[int]):
    shape = from_dict(EncoderConfig, section(config, "model.encoder"), where="model.encoder")
    for seed in random_seeds:
        torch.manual_seed(seed)                       # as `sslam probe --checkpoint random --seed S` does
        yield f"random{seed}", AudioEncoder(shape)
    for path in sorted((results / "pretrain").glob("*/checkpoint.pt"), key=lambda p: (p.parent.name != "stage1", p)):
        yield path.parent.name, load_encoder(path)


@torch.no_grad()
def layer_features(encoder, dataset, batch_size: int = 32) -> tuple[dict[tuple[int, str], np.ndarray], np.ndarray]:
    """{(layer, pooling): (N, features) float64} and the targets (N, C), every layer in one pass per batch."""
    encoder.eval()
    freq_patches = encoder.config.freq_patches
    pooled: dict[tuple[int, str], list[np.ndarray]] = {}
    targets = []
    for fbank, target in batch_loader(dataset, None, batch_size, 0):
        tokens = encoder.embed(fbank)
        outputs = [torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1)]   # L0, a CLS slot for pooling
        sequence = encoder.add_cls_and_norm(tokens)
        for block in encoder.blocks:
            sequence, _ = block(sequence)
            outputs.append(sequence)
        for layer, output in enumerate(outputs):
            for pooling in POOLINGS:
                features = pool_features(output, pooling, freq_patches)
                features = torch.nn.functional.layer_norm(features, features.shape[-1:], eps=encoder.config.norm_eps)
                pooled.setdefault((layer, pooling), []).append(features.double().numpy())
        targets.append(target.numpy())
    return {key: np.concatenate(value) for key, value in pooled.items()}, np.concatenate(targets)


def probe(benchmark: BenchmarkConfig, shards: dict[str, list[str]], encoder, seed: int) -> dict[str, float]:
    """{"L<layer>/<pooling>": the benchmark's metric} over the benchmark's rounds (folds: their mean)."""
    train_shards = shards[benchmark.training_dataset]
    mean, std = normalisation_stats(train_shards)
    survey = FbankDataset(train_shards, mean, std, labelled=True)
    rounds = plan_rounds(benchmark, folds_in_data=sorted(set(survey.column("fold").tolist())))
    values: dict[str, list[float]] = {}
    for round_ in rounds:
        subsets = [FbankDataset(shards[subset.dataset], mean, std, labelled=True, splits=subset.splits,
                                folds=subset.folds) for subset in (round_.train, round_.test)]
        (train, train_y), (test, test_y) = (layer_features(encoder, subset) for subset in subsets)
        for key in train:
            standardise = Standardiser.of(train[key], encoder.config.norm_eps)
            train_x, test_x = standardise(train[key]), standardise(test[key])
            l2, _ = choose_l2(train_x, train_y, benchmark.task, benchmark.linear, seed)
            fitted = fit_logistic(train_x, train_y, benchmark.task, l2, benchmark.linear.max_iter,
                                  benchmark.linear.tolerance)
            value = score(benchmark.metric, test_y, fitted.scores(test_x), subsets[1].classes)["value"]
            values.setdefault(f"L{key[0]}/{key[1]}", []).append(value)
    return {key: float(np.mean(value)) for key, value in values.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a finished demo's results folder")
    parser.add_argument("--config", required=True, help="the study YAML it ran with")
    parser.add_argument("--benchmarks", nargs="+", default=["synth_mono", "synth_poly"])
    parser.add_argument("--random-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--seed", type=int, default=0, help="the probe's seed (its cross-validation folds)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_yaml(args.config)

    datasets = section(config, "datasets")
    shards = {name: [str(p) for p in study_shard_paths(args.results, name, entry.get("shards", 1))]
              for name, entry in datasets.items()}
    benchmarks = {name: from_dict(BenchmarkConfig, section(config, f"evaluation.benchmarks.{name}"),
                                  where=f"evaluation.benchmarks.{name}") for name in args.benchmarks}
    table: dict[str, dict[str, dict[str, float]]] = {name: {} for name in benchmarks}
    started = time.perf_counter()
    for label, encoder in encoders(args.results, config, args.random_seeds):
        for name, benchmark in benchmarks.items():
            table[name][label] = probe(benchmark, shards, encoder, args.seed)
        print(f"{label}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    for name, rows in table.items():
        columns = list(next(iter(rows.values())))
        print(f"\n{name} ({benchmarks[name].metric}, %), converged probe per layer and pooling")
        print("| encoder | " + " | ".join(columns) + " |")
        print("|---|" + "---|" * len(columns))
        for label, values in rows.items():
            print(f"| {label} | " + " | ".join(f"{100 * values[c]:.1f}" for c in columns) + " |")
    print(json.dumps({"results": str(args.results), "seed": args.seed, "table": table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
