"""`sslam convert`: any supported checkpoint → EAT/Hugging Face layout-C safetensors with its config in the metadata."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sslam.model.checkpoints.read import build_encoder, read_checkpoint
from sslam.model.checkpoints.types import CheckpointError
from sslam.runtime.configuration import cli_number, to_dict
from sslam.runtime.io import atomic_path


# Own name -> layout C name, for `convert`.
_TO_HF = [
    (re.compile(r"patch_embed\.(weight|bias)"), r"model.local_encoder.proj.\1"),
    (re.compile(r"pos_embed"), "model.fixed_positional_encoder.positions"),
    (re.compile(r"cls_token"), "model.extra_tokens"),
    (re.compile(r"(pre_norm|blocks|fc_norm|head)\.(.+)"), r"model.\1.\2"),
]


# ---------------------------------------------------------------------------------------------- convert
def to_hf_state_dict(encoder_state: dict[str, torch.Tensor], head: dict[str, torch.Tensor] | None) -> dict:
    """Own names -> layout C names (encoder, plus an fc_norm/head classifier when it has those names)."""
    out = {}
    head = head if head and set(head) <= {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"} else {}
    for key, value in {**encoder_state, **head}.items():
        for pattern, replacement in _TO_HF:
            if pattern.fullmatch(key):
                out[pattern.sub(replacement, key)] = value.detach().float().contiguous()
                break
        else:
            raise CheckpointError(f"no layout-C name for key {key!r}")
    return out


def convert(source: str | Path, target: str | Path, which: str = "student", **overrides: Any) -> Path:
    """Write `which` encoder of any checkpoint as layout-C safetensors with its config in the metadata."""
    loaded = read_checkpoint(source, **overrides)
    encoder = build_encoder(loaded, which)  # validates the weights before anything is written
    target = Path(target)
    if target.suffix != ".safetensors":
        raise CheckpointError(f"output must end in .safetensors, got {target}")
    metadata = {"format": "pt", "sslam_encoder_config": json.dumps(to_dict(loaded.encoder_config)),
                "sslam_which": which, "sslam_source": str(source)}
    with atomic_path(target) as temporary:
        save_file(to_hf_state_dict(encoder.state_dict(), loaded.head), str(temporary), metadata=metadata)
    return target


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("input", help="checkpoint: sslam .pt, fairseq .pt (pre-training or fine-tuned), safetensors")
    parser.add_argument("output", help="output .safetensors file (EAT/HF layout C)")
    parser.add_argument("--which", choices=["student", "teacher"], default="student",
                        help="which encoder of a pretraining checkpoint: the student or its EMA teacher (default: %(default)s)")
    parser.add_argument("--num-heads", type=cli_number(">= 1"), default=None,
                        help="override (default: from metadata or width/64)")
    parser.add_argument("--num-mel-bins", type=cli_number(">= 1"), default=None,
                        help="override (default: from metadata or 128)")


def run(args: argparse.Namespace) -> int:
    out = convert(args.input, args.output, args.which, num_heads=args.num_heads, num_mel_bins=args.num_mel_bins)
    print(f"wrote {out}")
    return 0


__all__ = ["convert", "to_hf_state_dict"]
