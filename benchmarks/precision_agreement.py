"""bf16 autocast vs fp32: the same pretraining loss and gradients on the same batch, masks, regions and noise.

    python -m benchmarks.precision_agreement --device cuda --preset vitb      # on a GPU
    python -m benchmarks.precision_agreement --device cpu --preset tiny       # the code path, on the CPU

For Stage 1 and Stage 2 (SSLAM) the objective is built once; its random inputs are drawn once and injected
(`PretrainingObjective.forward(fbank, masks=, regions=, decoder_noise=)`), so the two passes differ only in
precision. Prints the relative difference of the total loss, of every term and of the gradient norm; the last
line is one JSON object.
"""
from __future__ import annotations

import argparse
import json

import torch

from benchmarks.pretrain_step import PRESETS
from sslam.objective.config import ObjectiveConfig
from sslam.objective.pretraining import PretrainingObjective


def one_pass(objective: PretrainingObjective, fbank, inputs, dtype) -> tuple[dict[str, float], float]:
    objective.zero_grad(set_to_none=True)
    with torch.autocast(fbank.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        output = objective(fbank, **inputs)
    output.loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(objective.trainable_parameters(), float("inf"))
    return {"loss": float(output.loss), **{k: float(v) for k, v in output.terms.items()}}, float(norm)


def compare(stage: int, args: argparse.Namespace, device: torch.device) -> dict:
    encoder_cfg, decoder_cfg, frames = PRESETS[args.preset]
    torch.manual_seed(0)
    objective = PretrainingObjective(encoder_cfg, decoder_cfg, ObjectiveConfig(clones_stage1=args.clones,
                                     clones_stage2=max(1, args.clones // 2)), stage, seed=0).to(device)
    fbank = torch.randn(args.batch, frames, encoder_cfg.num_mel_bins, device=device)
    grid = objective.student.grid(frames)
    masks = objective.draw_masks(args.batch, grid).to(device)
    regions = objective.draw_mix_regions(frames) if "mixed" in objective.halves else None
    noise = objective.draw_decoder_noise(masks.shape[0], int(masks[0].sum()), device, torch.float32)
    inputs = {"masks": masks, "regions": regions, "decoder_noise": noise}
    fp32, fp32_norm = one_pass(objective, fbank, inputs, None)
    bf16, bf16_norm = one_pass(objective, fbank, inputs, torch.bfloat16)
    relative = {k: abs(bf16[k] - fp32[k]) / max(abs(fp32[k]), 1e-12) for k in fp32}
    relative["grad_norm"] = abs(bf16_norm - fp32_norm) / max(abs(fp32_norm), 1e-12)
    worst = max(relative.values())
    print(f"stage {stage}: fp32 loss {fp32['loss']:.6g}, bf16 {bf16['loss']:.6g}; largest relative difference "
          f"{worst:.2e} ({max(relative, key=relative.get)})", flush=True)
    return {"stage": stage, "fp32": fp32, "bf16": bf16, "relative_difference": relative, "max_relative": worst}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--clones", type=int, default=4, help="Stage-1 clones (Stage 2: half)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    summary = {"preset": args.preset, "batch": args.batch, "device": str(device),
               "stages": [compare(stage, args, device) for stage in (1, 2)]}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
