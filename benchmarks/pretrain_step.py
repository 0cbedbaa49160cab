"""Pretraining step throughput (clips/s) and model-FLOPs utilisation, Stage 1 and Stage 2, on random input.

    python -m benchmarks.pretrain_step --preset tiny --device cpu          # from the repository root
    python -m benchmarks.pretrain_step --preset vitb --batch 12 --clones 16 --device cuda --dtype bf16 [--compile]

A timed step is a full training update as `sslam pretrain` runs it (forward, backward, clipping, AdamW,
scheduler, EMA), through the same `Pretrainer.update`. Model FLOPs count only the matmul work of the model
(`AudioEncoder.flops_per_forward`, plus the decoder's convolutions and projection):
  student forward + backward = 3 × forward, on CLS + the kept tokens of every clone (the patch embedding once
  per clip, as the objective embeds before cloning); decoder likewise 3 ×; teacher forward only: one pass per
  half on all tokens, plus Stage 2's source-retention pass over the mixed-region tokens.
Peak FLOP/s come from a table of accelerators (dense, no sparsity); on a CPU they are measured with a matmul
probe and labelled so. The last line printed is one JSON object with every number.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict

import torch
from torch.utils.data import Dataset

from sslam.model import DecoderConfig, EncoderConfig
from sslam.objective.config import ObjectiveConfig
from sslam.objective.pretraining import PretrainingObjective
from sslam.study.plan import GPUS, pretraining_step_flops
from sslam.train.config import TrainConfig
from sslam.train.distributed import DistributedContext
from sslam.train.loop import Pretrainer, RunIdentity

PRESETS = {
    # name: (encoder, decoder, frames)
    "tiny": (EncoderConfig(embed_dim=64, depth=2, num_heads=2, num_mel_bins=32, max_time_patches=16),
             DecoderConfig(depth=2, groups=4), 128),
    "vitb": (EncoderConfig(), DecoderConfig(), 1024),  # the official ViT-B over 1024 × 128
}



class RandomClips(Dataset):
    """Stands in for the cache: only its length matters, the benchmark feeds batches itself."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        raise RuntimeError("the benchmark feeds random batches directly")


def step_flops(objective: PretrainingObjective, batch: int, num_frames: int) -> dict[str, int]:
    """Model FLOPs of one update of `objective` on `batch` clips (sslam.study.plan owns the count)."""
    return pretraining_step_flops(objective.student.config, objective.decoder.config, objective.config,
                                  objective.stage, batch, num_frames)


def peak_flops(device: torch.device, dtype: str) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, (bf16_peak, _memory) in sorted(GPUS.items(), key=lambda item: -len(item[0])):
            if fragment.split("-")[0] in name.replace(" ", ""):
                # fp32 (TF32 off) runs at about 1/15 of the dense bf16 tensor-core peak on these GPUs.
                return (bf16_peak, f"table: {fragment} bf16 dense") if dtype == "bf16" else \
                    (bf16_peak / 15, f"table: {fragment} fp32 ≈ bf16/15")
        return float("nan"), f"unknown accelerator {name!r}"
    size = 1024
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    repeats, started = 20, time.perf_counter()
    for _ in range(repeats):
        a @ b
    elapsed = time.perf_counter() - started
    return 2 * size**3 * repeats / elapsed, f"measured: fp32 {size}² matmul probe on {torch.get_num_threads()} threads"


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_stage(stage: int, args: argparse.Namespace, device: torch.device) -> dict:
    encoder_cfg, decoder_cfg, frames = PRESETS[args.preset]
    stage2_clones = args.clones_stage2 or max(1, args.clones // 2)  # official: B·C equal in both stages
    objective_cfg = ObjectiveConfig(clones_stage1=args.clones, clones_stage2=stage2_clones)
    torch.manual_seed(0)
    objective = PretrainingObjective(encoder_cfg, decoder_cfg, objective_cfg, stage, seed=0)
    # warmup_steps=1: every timed update runs at a non-zero lr, as in a real run.
    train = TrainConfig(steps=args.warmup + args.steps, batch_size=args.batch, warmup_steps=1)
    identity = RunIdentity(stage, None, asdict(encoder_cfg), asdict(decoder_cfg))
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Pretrainer(objective, RandomClips(args.batch), train, scratch, identity,
                             DistributedContext(device=device), show_progress=False)
        if args.compile:  # as a job with `compile` does: the objective's device side, once for every draw
            objective.compile_step()
        autocast = torch.bfloat16 if args.dtype == "bf16" else None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fbank = torch.randn(args.batch, frames, encoder_cfg.num_mel_bins, device=device)
        for _ in range(args.warmup):
            trainer.update(objective, fbank, autocast)
        synchronise(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            trainer.update(objective, fbank, autocast)
        synchronise(device)
        seconds = (time.perf_counter() - started) / args.steps
    flops = step_flops(objective, args.batch, frames)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    sequences = len(objective.halves) * args.batch * objective.clones
    # clips/s counts the input clips; Stage 2's mixed copies are made from them inside the step.
    return {"stage": stage, "clones": objective.clones, "sequences": sequences,
            "seconds_per_step": seconds, "clips_per_s": args.batch / seconds,
            "model_tflops_per_step": flops["total"] / 1e12, "achieved_tflops": flops["total"] / seconds / 1e12,
            "flops_split": {k: flops[k] / 1e12 for k in ("student", "decoder", "teacher", "total")}, "peak_memory_gib": memory}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch", type=int, default=4, help="clips per step (Stage 2 adds as many mixed)")
    parser.add_argument("--clones", type=int, default=4, help="Stage-1 clones per clip")
    parser.add_argument("--clones-stage2", type=int, help="default: --clones / 2 (the official ratio)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="fp32")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, caches)")
    parser.add_argument("--stages", type=int, nargs="+", choices=(1, 2), default=(1, 2))
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the objective's device side (PretrainingObjective.compile_step)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    peak, peak_source = peak_flops(device, args.dtype)
    results = []
    for stage in args.stages:
        result = benchmark_stage(stage, args, device)
        result["mfu"] = result["achieved_tflops"] * 1e12 / peak
        results.append(result)
        print(f"stage {stage}: {result['clips_per_s']:.2f} clips/s, {result['seconds_per_step'] * 1e3:.1f} ms/step, "
              f"{result['achieved_tflops']:.3f} TFLOP/s, MFU {result['mfu']:.1%}", flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    summary = {"preset": args.preset, "batch": args.batch, "device": device_name, "dtype": args.dtype,
               "compile": args.compile, "torch": torch.__version__, "peak_tflops": peak / 1e12,
               "peak_source": peak_source, "stages": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
