"""`sslam pretrain`: Stage 1 / Stage 2 self-supervised pretraining from HDF5 fbank shards.

    sslam pretrain --config config/demo.yaml --stage 1 --out results/demo/pretrain/stage1
    sslam pretrain --config config/demo.yaml --stage 2 --variant SSLAM \\
        --init results/demo/pretrain/stage1/checkpoint.pt --out results/demo/pretrain/stage2/SSLAM
    torchrun --standalone --nproc-per-node=4 -m sslam.cli pretrain ...      # data parallel, same semantics

Writes DIR/metrics.jsonl (every `log_every` updates), DIR/state/last.pt (every `checkpoint_every` updates, at
the end, and on SIGUSR1/SIGTERM) and DIR/checkpoint.pt (the final weights in the project's checkpoint format).
`--resume` continues bit-exactly from a state written by the same code fingerprint (SSLAM_FINGERPRINT) and
settings; any other state is discarded with one log line and the run starts fresh. On SIGUSR1/SIGTERM the run
finishes its update, writes the state and exits with code 75 (the job harness, `sslam.runtime.jobs`).
This module turns the study config into objects; `sslam.train.loop` trains.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslam.audio.config import FrontEndConfig
from sslam.data.config import DatasetConfig
from sslam.model.checkpoints.read import read_checkpoint
from sslam.model.decoder import DecoderConfig
from sslam.model.encoder import EncoderConfig
from sslam.objective.config import stage1_variant_config, variant_config
from sslam.objective.pretraining import PretrainingObjective
from sslam.runtime.configuration import from_dict, load_yaml, section, to_dict
from sslam.runtime.device import DEVICE_CHOICES
from sslam.runtime.errors import ConfigError, SslamError
from sslam.runtime.jobs import Job
from sslam.runtime.snapshots import Preempted, discard_state
from sslam.runtime.tracking import CHECKPOINT_TAG, STAGE_TAG, VARIANT_TAG, results_relative
from sslam.train.config import TrainConfig, train_config_for_stage
from sslam.train.distributed import DistributedContext, init_distributed, shutdown_distributed
from sslam.train.loop import Pretrainer, RunIdentity
from sslam.train.state import load_training_state, state_paths

log = logging.getLogger(__name__)

def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--config", required=True, help="study YAML (model, objective, variants, pretrain, datasets)")
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--variant", help="Stage 2: objective preset + the study's `variants.<name>` overrides "
                                          "(MB-UA, MB-PMA, MB-UA-PMA, SSLAM, MixIT); Stage 1: a Stage-1 variant "
                                          "under `stage1_variants:` (Table 4); default: the base objective")
    parser.add_argument("--init", help="Stage-1 checkpoint to start Stage 2 from (student ← its student, "
                                       "teacher ← its teacher); required for a fresh Stage 2")
    parser.add_argument("--out", required=True, help="run folder (checkpoint.pt, metrics.jsonl, state/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/state/last.pt when it was written by the same code fingerprint "
                             "and settings; any other state is discarded (one log line) and the run starts fresh")
    parser.add_argument("--steps", type=int, help="override pretrain.stageK.steps (the schedule follows)")
    parser.add_argument("--device", default="auto", help=f"{' | '.join(DEVICE_CHOICES)} | cuda:N (default auto: "
                        "CUDA when it works); cuda without a usable GPU fails at once")
    parser.add_argument("--shards", nargs="+", help="HDF5 cache shards (default: the study's cache of "
                                                    "study.pretrain_dataset)")
    parser.add_argument("--tracking", help="tracking.json of the study (or set MLFLOW_TRACKING_URI)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="interactive progress bar (default: only on a terminal); the progress log lines "
                             "(every 30 s, SSLAM_PROGRESS_SECONDS) are written either way")


def objective_config(config: dict[str, Any], variant: str | None, stage: int = 2):
    """Stage 2: `objective` + variant preset + `variants.<variant>`; Stage 1: `objective`, or with a Stage-1
    variant `objective` + `stage1_variants.<variant>` (the teacher's EMA schedule is in neither: the
    training stage, pretrain.stageK.ema_*, owns it)."""
    base = section(config, "objective")
    if stage == 1 and variant:
        return stage1_variant_config(variant, base, (config.get("stage1_variants") or {}).get(variant))
    overrides = section(config, f"variants.{variant}") if variant else {}
    return variant_config(variant, base, overrides)


def pretrain_dataset_config(config: dict[str, Any]):
    """(name, DatasetConfig) of study.pretrain_dataset."""
    name = section(config, "study.pretrain_dataset", default="")
    if not name:
        raise ConfigError("study.pretrain_dataset is not set")
    if not isinstance(section(config, f"datasets.{name}", default=None), dict):
        raise ConfigError(f"study.pretrain_dataset is {name!r} but datasets.{name} is not configured")
    return name, from_dict(DatasetConfig, section(config, f"datasets.{name}"), where=f"datasets.{name}")


def default_shards(config: dict[str, Any]) -> list[Path]:
    """<study.results>/cache/<dataset>/shard-XXX-of-YYY.h5 for every shard of study.pretrain_dataset."""
    from sslam.data.datasets import study_shard_paths

    name, dataset = pretrain_dataset_config(config)
    return study_shard_paths(section(config, "study.results", default="results"), name, dataset.shards)


def pretraining_dataset(config: dict[str, Any], shard_paths: list[Path]):
    """Unlabelled clips of the train/unlabeled splits, normalised with the dataset's norm_mean/norm_std
    (null = computed from the cache's sums)."""
    from sslam.data.datasets import FbankDataset

    missing = [str(p) for p in shard_paths if not Path(p).is_file()]
    if missing:
        raise SslamError(f"cache shard(s) not found: {', '.join(missing)} (run `sslam cache build` first)")

    _, dataset = pretrain_dataset_config(config)
    # Shards built with another front end, target length or shard count are refused here, before any step.
    front_end = from_dict(FrontEndConfig, section(config, "front_end"), where="front_end")
    return FbankDataset(shard_paths, dataset.norm_mean, dataset.norm_std, labelled=False,
                        splits=("train", "unlabeled"), front_end=front_end, target_length=dataset.target_length)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_objective(config: dict[str, Any], stage: int, variant: str | None, seed: int,
                    norm_stats: tuple[float, float]):
    """The PretrainingObjective of the study's model/objective/variant config (weights from the global
    torch RNG; masks, mixing positions and decoder noise from its own generators seeded from `seed`)."""

    encoder_cfg = from_dict(EncoderConfig, section(config, "model.encoder"), "model.encoder")
    decoder_cfg = from_dict(DecoderConfig, section(config, "model.decoder"), "model.decoder")
    objective_cfg = objective_config(config, variant, stage)
    objective = PretrainingObjective(encoder_cfg, decoder_cfg, objective_cfg, stage, seed=seed,
                                     norm_stats=norm_stats)
    return objective, encoder_cfg, decoder_cfg, objective_cfg


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = load_yaml(args.config)
    args.results = section(config, "study.results", default="")
    train = train_config_for_stage(config, args.stage)
    if args.steps is not None:
        try:
            train = dataclasses.replace(train, steps=args.steps)
        except ValueError as error:
            raise ConfigError(f"--steps {args.steps}: {error}") from error
    out_dir = Path(args.out)
    has_state = state_paths(out_dir)[0].exists() or state_paths(out_dir)[1].exists()
    if has_state and not args.resume:
        raise SslamError(f"{out_dir} already holds a training state: pass --resume or choose another --out")
    if args.stage == 2 and not args.init and not has_state:
        raise ConfigError("a fresh Stage 2 needs --init STAGE1_CHECKPOINT")

    context = init_distributed(args.device)  # a GPU that cannot be had is one line, before any work
    run_name = f"stage{args.stage}" + (f"-{args.variant}" if args.variant else "")
    # Evaluation runs find this run by its checkpoint (relative to study.results: it moves with the folder).
    tags = {STAGE_TAG: args.stage, VARIANT_TAG: args.variant or "",
            CHECKPOINT_TAG: results_relative(out_dir / "checkpoint.pt", args.results)}
    finished = False
    # From here on SIGUSR1/SIGTERM only ask the loop to stop after its next update.
    with Job(out_dir, "sslam.train.pretrain", context.device, run_name=run_name, job="pretrain", tags=tags,
             tracking=args.tracking, world_size=context.world_size, main=context.is_main) as job:
        try:
            snapshot = load_training_state(out_dir) if args.resume else None
            shards = [Path(p) for p in args.shards] if args.shards else default_shards(config)
            dataset = pretraining_dataset(config, shards)
            # Same seed on every rank for the initial weights (DDP also broadcasts rank 0's), then a per-rank
            # seed so that ranks draw different masks and mixing positions.
            rank_seed = train.seed + 1000 * context.rank
            seed_everything(train.seed)
            objective, encoder_cfg, decoder_cfg, objective_cfg = build_objective(
                config, args.stage, args.variant, rank_seed, (dataset.norm_mean, dataset.norm_std))
            recorded = {"pretrain": to_dict(train), "objective": to_dict(objective_cfg),
                        "model": {"encoder": to_dict(encoder_cfg), "decoder": to_dict(decoder_cfg)},
                        "stage": args.stage, "variant": args.variant, "init": args.init}
            trained_input = {"norm_mean": dataset.norm_mean, "norm_std": dataset.norm_std,
                             "target_length": int(dataset.target_length)}
            identity = RunIdentity(args.stage, args.variant, to_dict(encoder_cfg), to_dict(decoder_cfg), recorded,
                                   input=trained_input, fingerprint=job.fingerprint)
            job.describe(identity.config)
            if snapshot is not None:
                expected = Pretrainer.expected_job(identity, train, len(dataset), context.world_size)
                problem = Pretrainer.snapshot_problem(snapshot, expected)
                if problem is not None:
                    log.warning("discarding the training state in %s (%s); starting fresh", out_dir / "state", problem)
                    if context.is_main:
                        discard_state(out_dir)
                    snapshot = None
            if snapshot is None and args.stage == 2:
                if not args.init:
                    raise ConfigError("a fresh Stage 2 needs --init STAGE1_CHECKPOINT")
                sources = objective.load_stage1(read_checkpoint(args.init))
                log.info("stage 2 initialised from %s: %s", args.init, sources)
            seed_everything(rank_seed)
            _train(args, train, objective, dataset, identity, snapshot, context, job)
            finished = True
        except Preempted:
            finished = True
            raise    # the harness turns it into exit code 75
        finally:
            # Wait for the other ranks only on success: after an error on one rank a barrier could hang.
            shutdown_distributed(context, wait_for_others=finished)
    return job.exit_code


def _train(args: argparse.Namespace, train: TrainConfig, objective, dataset, identity: RunIdentity,
           snapshot: dict[str, Any] | None, context: DistributedContext, job: Job) -> None:
    out_dir = Path(args.out)
    trainer = Pretrainer(objective, dataset, train, out_dir, identity, context, metrics=job.metrics,
                         show_progress=args.progress, stop=job.stop, on_steady=job.steady,
                         on_steady_end=job.steady_end)
    if snapshot is not None:
        trainer.restore(snapshot)
        log.info("resuming %s at update %d of %d%s", out_dir, trainer.step, train.steps,
                 " (--init is ignored: the weights come from the snapshot)" if args.init else "")
    final = trainer.run()
    trainer.save_final(out_dir / "checkpoint.pt")
    if job.tracker is not None:
        job.tracker.log_artifact(out_dir / "metrics.jsonl")
    if context.is_main:
        log.info("finished %d updates: %s", trainer.step,
                 ", ".join(f"{k}={v:.6g}" for k, v in final.items() if isinstance(v, float)))
