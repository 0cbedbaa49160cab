"""`sslam finetune` and `sslam probe`: train a classifier on one benchmark and write metrics.json.

    sslam probe --config config/demo.yaml --benchmark synth_poly \
        --checkpoint results/demo/pretrain/stage2/SSLAM/checkpoint.pt \
        --out results/demo/eval/SSLAM/synth_poly/linear/seed0 --seed 0
    sslam probe ... --checkpoint random          # randomly initialised encoder of the config's model.encoder

metrics.json (the source of truth for every table): benchmark, regime, variant, seed, checkpoint,
metric + value (the headline), per_class, classes_without_positives, per_bin / per_fold where the
benchmark has them, selection (which model is the headline), selections (last, best_on_valid and best_on_eval
from the same run, each with its score, step and predictions file), steps, epochs, wall_time_s, code_hash,
predictions. predictions.npz: the per-clip test scores of the headline; predictions.<selection>.npz those of
each selection (docs/evaluation.md). The same numbers go to MLflow when tracking is on (tags
job=evaluate, variant, benchmark, regime, seed, code: sslam.runtime.tracking's vocabulary).

On SIGUSR1/SIGTERM the job writes OUT/state/last.pt at the next step boundary and exits with code 75
(the job harness, `sslam.runtime.jobs`); running the same command again resumes it exactly
(`sslam.evaluation.resume`).
"""
from __future__ import annotations

import argparse
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslam import __version__
from sslam.audio.config import FrontEndConfig
from sslam.data.config import DatasetConfig
from sslam.evaluation.config import SELECTIONS, BenchmarkConfig, selection_predictions
from sslam.evaluation.logistic import solver_summary
from sslam.evaluation.protocols import combine, plan_rounds, pooled_predictions, selection_summary
from sslam.evaluation.resume import EvaluationState, file_identity
from sslam.evaluation.rounds import RoundResume, RoundSettings, run_round
from sslam.model.encoder import AudioEncoder, EncoderConfig
from sslam.runtime.configuration import from_dict, load_yaml, section, to_dict
from sslam.runtime.device import DEVICE_CHOICES, resolve_device
from sslam.runtime.errors import ConfigError
from sslam.runtime.io import atomic_path, atomic_write_json
from sslam.runtime.jobs import Job
from sslam.runtime.snapshots import PREEMPTED_EXIT_CODE
from sslam.runtime.tracking import (BENCHMARK_TAG, PRETRAIN_CHECKPOINT_TAG, REGIME_TAG, SEED_TAG, VARIANT_TAG,
                                    results_relative)

log = logging.getLogger(__name__)
PREDICTIONS = "predictions.npz"

REGIME_OF_COMMAND = {"finetune": "finetune", "probe": "linear"}
RANDOM_INIT = "random"
DEFAULT_ENCODER_SECTION = "model.encoder"


ENTRY_MODULE = __name__   # what a job's fingerprint covers outside the workflow (this module and its imports)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--config", required=True, help="study YAML (evaluation.benchmarks, datasets, study, model)")
    parser.add_argument("--benchmark", required=True, help="name under evaluation.benchmarks")
    parser.add_argument("--checkpoint", help="pretrained checkpoint, or 'random[:SECTION]' for a randomly "
                        f"initialised encoder built from SECTION of the config (default {DEFAULT_ENCODER_SECTION})")
    parser.add_argument("--random-init", action="store_true", help="same as --checkpoint random")
    parser.add_argument("--out", required=True, help="output folder (metrics.json, metrics.jsonl)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", help="pretraining variant recorded with the result "
                        "(default: the checkpoint's own, 'random-init' for a random encoder)")
    parser.add_argument("--shards", nargs="+", help="cache shards of the benchmark's dataset "
                        "(default <study.results>/cache/<dataset>/shard-XXX-of-NNN.h5)")
    parser.add_argument("--train-shards", nargs="+", help="cache shards of the training dataset when it "
                        "differs from the benchmark's dataset (polyphony: poly)")
    parser.add_argument("--device", default="auto", help=f"{' | '.join(DEVICE_CHOICES)} | cuda:N (default auto: "
                        "CUDA when it works); cuda without a usable GPU fails at once")
    parser.add_argument("--tracking", help="the study's tracking.json (MLflow); tracking is off without it")
    parser.add_argument("--max-steps", type=int, help="cap the optimiser steps of every round (smoke tests)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="interactive progress bar (default: only on a terminal); the progress log lines "
                             "(every 30 s, SSLAM_PROGRESS_SECONDS) are written either way")


def dataset_config(config: dict[str, Any], dataset: str):
    """The dataset's `datasets.<name>` entry (norm constants, shard count, target length)."""
    settings = section(config, f"datasets.{dataset}", default=None)
    if not isinstance(settings, dict) or not settings:
        raise ConfigError(f"dataset {dataset!r} is not configured under datasets:")
    return from_dict(DatasetConfig, settings, where=f"datasets.{dataset}")


def default_shards(config: dict[str, Any], dataset: str) -> list[Path]:
    """<study.results>/cache/<dataset>/shard-{i:03d}-of-{n:03d}.h5 for n = datasets.<dataset>.shards."""
    results = section(config, "study.results", default="")
    if not results:
        raise ConfigError("study.results is not set; pass --shards")
    from sslam.data.datasets import study_shard_paths

    return study_shard_paths(results, dataset, dataset_config(config, dataset).shards)


def check_cache(config: dict[str, Any], dataset: str, shards: list[Path]) -> None:
    """Refuse shards built with another front end, target length or shard count than the config (one line)."""
    from sslam.data.shards import check_shard_settings

    settings = dataset_config(config, dataset)
    front_end = from_dict(FrontEndConfig, section(config, "front_end"), where="front_end")
    check_shard_settings(shards, front_end, settings.target_length, settings.shards)


def load_backbone(spec: str, config: dict[str, Any], which: str, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Encoder from a checkpoint file, or a randomly initialised one ('random[:section]')."""
    if spec == RANDOM_INIT or spec.startswith(RANDOM_INIT + ":"):
        where = spec.partition(":")[2] or DEFAULT_ENCODER_SECTION
        encoder_config = from_dict(EncoderConfig, section(config, where), where=where)
        torch.manual_seed(seed)
        return AudioEncoder(encoder_config), {"checkpoint": spec, "variant": "random-init", "weights": "random"}
    from sslam.model.checkpoints.read import build_encoder, read_checkpoint

    loaded = read_checkpoint(spec)
    encoder = build_encoder(loaded, which)
    meta = loaded.meta or {}
    return encoder, {"checkpoint": str(spec), "variant": meta.get("variant"), "weights": which,
                     "pretrain_step": meta.get("step"), "pretrain_stage": meta.get("stage")}


@dataclass
class EvaluationJob:
    """Everything one `sslam finetune|probe` run needs, resolved from the CLI and the config."""

    benchmark_name: str
    benchmark: BenchmarkConfig
    regime_name: str                        # finetune | linear
    encoder: torch.nn.Module
    backbone: dict[str, Any]
    test_shards: list[Path]
    train_shards: list[Path]
    norm_mean: float | None
    norm_std: float | None
    out: Path
    seed: int = 0
    variant: str | None = None
    device: str = "cpu"
    tracking: str | None = None
    max_steps: int | None = None
    progress_bar: bool | None = False
    pretrain_checkpoint: str | None = None  # the checkpoint relative to study.results: links the pretraining run


def job_identity(job: EvaluationJob, rounds, norm_mean: float, norm_std: float, fingerprint: str) -> dict[str, Any]:
    """What a saved state must have been written by to be resumed by `job` (sslam.evaluation.resume)."""
    checkpoint = job.backbone.get("checkpoint")
    settings = {
        "benchmark": job.benchmark_name, "regime": job.regime_name, "seed": job.seed, "variant": job.variant,
        "backbone": job.backbone,
        "checkpoint_file": file_identity(checkpoint) if checkpoint and Path(checkpoint).is_file() else None,
        "config": to_dict(job.benchmark), "max_steps": job.max_steps, "norm": [norm_mean, norm_std],
        "shards": {"test": [file_identity(p) for p in job.test_shards],
                   "train": [file_identity(p) for p in job.train_shards]},
        "rounds": [round_.name for round_ in rounds], "device": torch.device(job.device).type,
    }
    return {"fingerprint": fingerprint, "settings": settings}


def write_predictions(path: Path, results) -> int:
    """OUT/predictions.npz (atomic; no pickled objects: np.load(allow_pickle=False) reads it); returns N."""
    import numpy as np

    arrays = pooled_predictions(results)
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        np.savez(stream, **arrays)
    return int(arrays["targets"].shape[0])


def tracked_result(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics.json numbers MLflow gets: the headline, per polyphony bin and per fold, the wall time."""
    name = metrics["metric"]
    values = {name: metrics["value"], "wall_time_s": metrics["wall_time_s"], "num_test": metrics.get("num_test")}
    for key, entry in (metrics.get("per_bin") or {}).items():
        values[f"{name}/bin_{key}"] = entry.get("value")
        values[f"{name}/bin_{key}/clips"] = entry.get("clips")
    for entry in metrics.get("per_fold") or []:
        values[f"{name}/fold_{entry.get('fold')}"] = entry.get("value")
    for selection, entry in (metrics.get("selections") or {}).items():
        values[f"{name}/{selection}"] = entry.get("value")
    return {key: value for key, value in values.items() if value is not None}


def evaluate(job: EvaluationJob) -> dict[str, Any] | None:
    """Run every round of the benchmark's protocol, write OUT/metrics.json, return its content (None when a stop
    signal ended the job at a step boundary, after writing its state)."""
    from sslam.data.datasets import FbankDataset, normalisation_stats

    started = time.perf_counter()
    regime = job.benchmark.regime(job.regime_name)
    norm_mean, norm_std = job.norm_mean, job.norm_std
    if norm_mean is None or norm_std is None:
        # Both train and test clips are normalised with the TRAINING data's statistics.
        norm_mean, norm_std = normalisation_stats(job.train_shards)
    survey = FbankDataset(job.train_shards, norm_mean, norm_std, labelled=True)
    rounds = plan_rounds(job.benchmark, folds_in_data=sorted(set(survey.column("fold").tolist())),
                         splits_in_training_data=sorted(set(survey.column("split").tolist())))
    job.out.mkdir(parents=True, exist_ok=True)
    variant = job.variant or job.backbone.get("variant") or "unknown"
    tags = {VARIANT_TAG: variant, BENCHMARK_TAG: job.benchmark_name, REGIME_TAG: job.regime_name, SEED_TAG: job.seed}
    run_name = f"eval-{variant}-{job.benchmark_name}-{job.regime_name}-seed{job.seed}"
    settings = RoundSettings(benchmark=job.benchmark, regime=regime, regime_name=job.regime_name,
                             shards={job.benchmark.dataset: job.test_shards,
                                     job.benchmark.training_dataset: job.train_shards},
                             norm_mean=norm_mean, norm_std=norm_std, device=torch.device(job.device),
                             seed=job.seed, max_steps=job.max_steps, progress_bar=job.progress_bar)
    if job.pretrain_checkpoint:
        tags[PRETRAIN_CHECKPOINT_TAG] = job.pretrain_checkpoint
    # live=False: nothing reaches MLflow before metrics.json is written, and a dead store cannot cost it.
    with Job(job.out, ENTRY_MODULE, job.device, run_name=run_name, job="evaluate", tags=tags,
             params=to_dict(job.benchmark), tracking=job.tracking, live=False,
             link_checkpoint=job.pretrain_checkpoint) as harness:
        hash_value = harness.fingerprint
        state = EvaluationState.open(job.out, job_identity(job, rounds, norm_mean, norm_std, hash_value))
        log_file = harness.metrics
        log_file.restore(log_file.lines()[:state.log_lines])   # lines after the state's are re-done

        def log_record(record: dict[str, Any]) -> None:
            log_file.write(record, mirror=record.get("step", 0) % 10 == 0 or "evaluation" in record)

        outcomes = state.outcomes(rounds)
        for round_ in rounds[len(outcomes):]:
            resume = RoundResume(state.round_state, lambda part: state.save(part, len(log_file.lines())), harness.stop)
            outcome = run_round(copy.deepcopy(job.encoder), round_, settings, log_record, resume, harness)
            state.finish_round(outcome.classes, outcome.result, len(log_file.lines()))
            outcomes.append((outcome.classes, outcome.result))
        classes = outcomes[0][0]
        results = [result for _, result in outcomes]
        summary = combine(job.benchmark.metric, classes, results)
        num_clips = write_predictions(job.out / PREDICTIONS, results)
        selections = {}
        for name in SELECTIONS:
            selections[name] = {**selection_summary(job.benchmark.metric, classes, results, name),
                                "predictions": selection_predictions(name)}
            write_predictions(job.out / selection_predictions(name), [r.selected(name) for r in results])
        metrics = {
            "benchmark": job.benchmark_name, "regime": job.regime_name, "variant": variant, "seed": job.seed,
            **{key: value for key, value in job.backbone.items() if key != "variant"},
            "checkpoint_variant": job.backbone.get("variant"),
            "dataset": job.benchmark.dataset, "train_dataset": job.benchmark.training_dataset,
            "task": job.benchmark.task, "protocol": job.benchmark.protocol,
            **summary,
            "classes": classes,
            # One round: its selection; folds: the policy (each fold's choice is under per_fold).
            "selection": results[0].selection if len(results) == 1 else
            {key: results[0].selection[key] for key in ("policy", "requested")},
            "selections": selections,
            "steps": sum(r.steps for r in results),
            "epochs": results[0].epochs,
            "num_train": results[0].num_train,
            "num_test_clips": num_clips,
            "predictions": PREDICTIONS,
            **({"solver": solver} if (solver := solver_summary([r.selection for r in results])) else {}),
            "max_steps": job.max_steps,
            "norm_mean": norm_mean, "norm_std": norm_std,
            "wall_time_s": time.perf_counter() - started,
            "resumed": state.resumes,
            "code_hash": hash_value, "sslam_version": __version__, "device": job.device,
            "config": to_dict(job.benchmark),
        }
        atomic_write_json(job.out / "metrics.json", metrics)  # a reader (the tables rule) never sees half of it
        if harness.tracker is not None:
            harness.tracker.log_metrics(tracked_result(metrics))
            harness.tracker.log_artifact(job.out / "metrics.json")
    if harness.exit_code:
        return None              # stopped at a step boundary, its state written: the same command resumes it
    state.clear()  # the result is final: nothing left to resume
    return metrics


def job_from_args(args: argparse.Namespace) -> EvaluationJob:
    config = load_yaml(args.config)
    benchmarks = section(config, "evaluation.benchmarks")
    if args.benchmark not in benchmarks:
        raise ConfigError(f"benchmark {args.benchmark!r} is not under evaluation.benchmarks "
                          f"(known: {', '.join(sorted(benchmarks)) or 'none'})")
    where = f"evaluation.benchmarks.{args.benchmark}"
    benchmark = from_dict(BenchmarkConfig, benchmarks[args.benchmark], where=where)
    regime_name = REGIME_OF_COMMAND[args.command]
    regime = benchmark.regime(regime_name)
    device = resolve_device(args.device)  # a GPU that cannot be had is one line, before any work
    if args.random_init and args.checkpoint and not args.checkpoint.startswith(RANDOM_INIT):
        raise ConfigError("give either --checkpoint PATH or --random-init, not both")
    spec = RANDOM_INIT if args.random_init and not args.checkpoint else args.checkpoint
    if not spec:
        raise ConfigError("--checkpoint (or --random-init) is required")
    encoder, backbone = load_backbone(spec, config, regime.encoder_weights, args.seed)
    train_name = benchmark.training_dataset
    test_shards = [Path(p) for p in args.shards] if args.shards else default_shards(config, benchmark.dataset)
    if train_name == benchmark.dataset:
        train_shards = [Path(p) for p in args.train_shards] if args.train_shards else test_shards
    else:
        train_shards = [Path(p) for p in args.train_shards] if args.train_shards else default_shards(config, train_name)
    # Train and test clips are both normalised with the TRAINING dataset's constants, of this regime (Table 8
    # gives Degrees of Polyphony a fine-tuning pair of its own).
    norm_mean, norm_std = dataset_config(config, train_name).normalisation(regime_name)
    check_cache(config, benchmark.dataset, test_shards)
    if train_name != benchmark.dataset:
        check_cache(config, train_name, train_shards)
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError("--max-steps must be positive")
    linked = None if spec.startswith(RANDOM_INIT) else results_relative(spec, section(config, "study.results", default=""))
    return EvaluationJob(args.benchmark, benchmark, regime_name, encoder, backbone, test_shards, train_shards,
                         norm_mean, norm_std, Path(args.out),
                         args.seed, args.variant, str(device), args.tracking, args.max_steps,
                         progress_bar=args.progress, pretrain_checkpoint=linked)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    metrics = evaluate(job_from_args(args))
    if metrics is None:
        return PREEMPTED_EXIT_CODE
    print(f"{metrics['benchmark']} {metrics['regime']} {metrics['variant']} seed {metrics['seed']}: "
          f"{metrics['metric']} = {metrics['value']:.4f} ({metrics['wall_time_s']:.1f} s) -> {args.out}/metrics.json")
    return 0
