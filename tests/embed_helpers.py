"""Checkpoints for the embedding tests, written the way their real producers write them.

* a project checkpoint through the training writer `sslam.train.state.project_checkpoint`;
* a checkpoint in EAT's Hugging Face layout (docs/checkpoints.md, layout C) inside a folder laid out as
  the Hugging Face hub cache (models--OWNER--NAME/{blobs,refs,snapshots}), with EAT's config.json names.
  Its key names are written out here independently of the package's own rename rules.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sslam.runtime.configuration import to_dict
from sslam.model import AudioEncoder, EncoderConfig

# 3 heads of 16, 64 mel bins (4 frequency patches), windows of up to 24 time patches (3.84 s).
TINY = dict(embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0, num_mel_bins=64, max_time_patches=24)
TRAINED_INPUT = {"norm_mean": -3.5, "norm_std": 3.0, "target_length": 192}  # deliberately not AudioSet's
EAT_REPO = "worstchan/EAT-base_epoch30_pretrain"
EAT_REVISION = "4bd9879" + "0" * 33  # a 40-hex commit id, as the hub cache stores snapshots


def tiny_encoder(seed: int = 0) -> AudioEncoder:
    torch.manual_seed(seed)
    return AudioEncoder(EncoderConfig(**TINY)).eval()


def write_project_checkpoint(path: Path, encoder: AudioEncoder, trained_input: dict | None = TRAINED_INPUT) -> Path:
    from sslam.model import Decoder2d, DecoderConfig
    from sslam.train.state import atomic_torch_save, project_checkpoint

    decoder_config = DecoderConfig(depth=1, groups=4)
    decoder = Decoder2d(decoder_config, encoder.config.embed_dim)
    checkpoint = project_checkpoint(encoder_config=to_dict(encoder.config), decoder_config=to_dict(decoder_config),
                                    student=encoder.state_dict(), decoder=decoder.state_dict(),
                                    teacher=encoder.state_dict(), stage=2, variant="SSLAM", step=10,
                                    input=trained_input)
    atomic_torch_save(checkpoint, path)
    return path


def eat_layout_state(encoder: AudioEncoder) -> dict[str, torch.Tensor]:
    """Own names -> the names of EAT's Hugging Face model.safetensors."""
    state = {}
    for key, value in encoder.state_dict().items():
        if key.startswith("patch_embed."):
            name = "model.local_encoder.proj." + key.split(".")[-1]
        elif key == "pos_embed":
            name = "model.fixed_positional_encoder.positions"
        elif key == "cls_token":
            name = "model.extra_tokens"
        else:  # pre_norm.*, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*
            name = "model." + key
        state[name] = value.detach().clone().contiguous()
    return state


def eat_config(config: EncoderConfig) -> dict:
    """EAT's config.json (configuration_eat.py names; auto_map points at its remote code)."""
    return {"architectures": ["EATModel"], "model_type": "eat",
            "auto_map": {"AutoConfig": "configuration_eat.EATConfig", "AutoModel": "modeling_eat.EATModel"},
            "embed_dim": config.embed_dim, "depth": config.depth, "num_heads": config.num_heads,
            "patch_size": config.patch_size, "stride": config.patch_size, "in_chans": 1,
            "mel_bins": config.num_mel_bins, "max_length": config.max_time_patches, "num_classes": 527,
            "model_variant": "pretrain", "mlp_ratio": config.mlp_ratio, "qkv_bias": config.qkv_bias,
            "norm_eps": config.norm_eps, "layer_norm_first": False, "fixed_positions": True,
            "img_size": [1024, config.num_mel_bins]}


def write_hub_cache(cache: Path, encoder: AudioEncoder, repo: str = EAT_REPO, revision: str = EAT_REVISION) -> Path:
    """cache/models--OWNER--NAME as huggingface_hub lays it out: content-addressed blobs, refs/main holding
    the commit, snapshots/<commit>/<file> symlinks to the blobs. Returns the repo's cache folder."""
    entry = cache / ("models--" + repo.replace("/", "--"))
    (entry / "blobs").mkdir(parents=True, exist_ok=True)
    (entry / "refs").mkdir(exist_ok=True)
    snapshot = entry / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    staging = entry / "staging.safetensors"
    save_file(eat_layout_state(encoder), str(staging), metadata={"format": "pt"})
    files = {"model.safetensors": staging.read_bytes(), "config.json": json.dumps(eat_config(encoder.config)).encode()}
    staging.unlink()
    for name, content in files.items():
        blob = entry / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).symlink_to(Path("../..") / "blobs" / blob.name)
    (entry / "refs" / "main").write_text(revision)
    return entry


def same_outputs(first: AudioEncoder, second: AudioEncoder, frames: int = 64) -> bool:
    fbank = torch.randn(2, frames, first.config.num_mel_bins)
    with torch.no_grad():
        return torch.allclose(first(fbank), second(fbank), atol=1e-5)
