"""`sslam export`: an encoder as a Hugging Face-style model folder or as ONNX, and random-init checkpoints.

* ``--format pretrained``: ``DIR/model.safetensors`` (layout C key names, docs/checkpoints.md, with the
  exact `EncoderConfig` in its metadata) + ``DIR/config.json`` (EAT's config names, plus the input
  settings norm_mean / norm_std / target_length). Every loader in this package reads the folder back
  (`sslam.embeddings.load_encoder(DIR)`, ``sslam extract DIR``...), and it can be uploaded to the hub as is.
* ``--format onnx``: the encoder with dynamic batch and time. Input ``fbank`` (N, T, F) float32 =
  the normalised Kaldi fbank (T a multiple of the patch size, at most max_time_patches·patch frames);
  output ``tokens`` (N, 1 + T/p·F/p, D), CLS first, time-major. The front end (decoding, fbank,
  normalisation) is not part of the graph: the model's metadata_props give its settings.
* ``--random-init [--config CFG]``: a randomly initialised encoder (the ``model.encoder`` section of a
  study config, default ViT-B/16) instead of a checkpoint: what tests and smoke runs need.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from sslam.runtime.configuration import from_dict, load_yaml, section, to_dict
from sslam.runtime.errors import SslamError
from sslam.runtime.io import atomic_path, atomic_write_json
from sslam.model.checkpoints.read import build_encoder, read_checkpoint
from sslam.model.checkpoints.convert import to_hf_state_dict
from sslam.model.config import EncoderConfig
from sslam.model.encoder import AudioEncoder
from sslam.model.checkpoints.routes import CONFIG_NAME, WEIGHTS_NAME
from sslam.model.checkpoints.settings import InputSettings, default_input, input_settings

FORMATS = ("pretrained", "onnx")
# EncoderConfig field -> the name EAT's Hugging Face config.json uses (read back by sslam.model.checkpoints.read)
_EAT_CONFIG_NAMES = {"embed_dim": "embed_dim", "depth": "depth", "num_heads": "num_heads", "mlp_ratio": "mlp_ratio",
                     "patch_size": "patch_size", "num_mel_bins": "mel_bins", "max_time_patches": "max_length",
                     "qkv_bias": "qkv_bias", "norm_eps": "norm_eps"}


def random_encoder(config: EncoderConfig | None = None, seed: int = 0) -> AudioEncoder:
    """A randomly initialised encoder (eval mode), the same for the same seed; the global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AudioEncoder(config).eval()


def save_pretrained(encoder: AudioEncoder, folder: str | Path, settings: InputSettings | None = None,
                    source: str | None = None) -> Path:
    """Write `encoder` as DIR/model.safetensors + DIR/config.json (module docstring); returns DIR."""
    folder = Path(folder)
    settings = settings or InputSettings()
    if folder.exists() and not folder.is_dir():
        raise SslamError(f"{folder} exists and is not a folder")
    config = encoder.config
    metadata = {"format": "pt", "sslam_encoder_config": json.dumps(to_dict(config))}
    with atomic_path(folder / WEIGHTS_NAME) as temporary:
        save_file(to_hf_state_dict(encoder.state_dict(), None), str(temporary), metadata=metadata)
    description = {"library_name": "sslam", "model_variant": "pretrain",
                   **{theirs: getattr(config, ours) for ours, theirs in _EAT_CONFIG_NAMES.items()},
                   **settings.as_dict(), "sample_rate": 16000, "source": source}
    atomic_write_json(folder / CONFIG_NAME, description)
    return folder


def export_onnx(encoder: AudioEncoder, path: str | Path, settings: InputSettings | None = None) -> Path:
    """The encoder as ONNX with dynamic batch and time (module docstring), exported by torch.export."""
    try:
        import onnx
    except ImportError as error:
        raise SslamError("ONNX export needs onnx and onnxscript: pip install 'sslam[embeddings]'") from error
    path = Path(path)
    settings = settings or InputSettings()
    config = encoder.config
    encoder = encoder.float().cpu().eval()
    # Example sizes other than 0 and 1, so that the exporter keeps both dimensions symbolic.
    example_patches = max(2, min(settings.target_length // config.patch_size, config.max_time_patches))
    example = torch.zeros(2, example_patches * config.patch_size, config.num_mel_bins)
    batch = torch.export.Dim("batch", min=1)
    time_patches = torch.export.Dim("time_patches", min=1, max=config.max_time_patches)
    with torch.no_grad():
        program = torch.onnx.export(encoder, (example,), input_names=["fbank"], output_names=["tokens"],
                                    dynamic_shapes={"x": {0: batch, 1: config.patch_size * time_patches}},
                                    dynamo=True, verbose=False)
    model = program.model_proto
    properties = {**settings.as_dict(), "sample_rate": 16000, "patch_size": config.patch_size,
                  "num_mel_bins": config.num_mel_bins, "embed_dim": config.embed_dim,
                  "max_frames": config.max_time_patches * config.patch_size,
                  "input": "normalised Kaldi fbank (N, T, F): (log-mel - norm_mean) / (2 norm_std)",
                  "output": "tokens (N, 1 + T/p * F/p, D): CLS first, then patches time-major",
                  "sslam_encoder_config": json.dumps(to_dict(config))}
    onnx.helper.set_model_props(model, {key: str(value) for key, value in properties.items()})
    with atomic_path(path) as temporary:
        onnx.save_model(model, str(temporary))
    return path


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="checkpoint file, hf:OWNER/NAME[@REV][:FILE] or model folder (docs/checkpoints.md)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (pretrained) or .onnx file")
    parser.add_argument("--format", choices=FORMATS, default="pretrained",
                        help="pretrained: a folder with model.safetensors + config.json, readable by every loader here; "
                             "onnx: one .onnx file, the encoder with dynamic batch and time (default: %(default)s)")
    parser.add_argument("--which", choices=["student", "teacher"], default="student",
                        help="which encoder of a pretraining checkpoint: the student or its EMA teacher (default: %(default)s)")
    parser.add_argument("--random-init", action="store_true", help="export a randomly initialised encoder")
    parser.add_argument("--config", type=Path, default=None,
                        help="with --random-init: study YAML whose model.encoder section sets the architecture (default: ViT-B/16)")
    parser.add_argument("--seed", type=int, default=0, help="with --random-init: the seed of the weights (default: %(default)s)")
    parser.add_argument("--norm-mean", type=float, default=None, help="default: what the checkpoint records")
    parser.add_argument("--norm-std", type=float, default=None, help="default: what the checkpoint records")
    parser.add_argument("--target-length", type=int, default=None, help="default: what the checkpoint records")
    parser.add_argument("--num-heads", type=int, default=None, help="foreign files only (default: width/64)")
    parser.add_argument("--num-mel-bins", type=int, default=None, help="foreign files only (default: 128)")


def portable_name(checkpoint: str) -> str:
    """How an exported folder names its source: an hf: id as given, a local file or folder by its name only (an
    absolute path would tell others nothing and this machine's layout to everyone)."""
    text = str(checkpoint)
    return text if text.startswith("hf:") else (Path(text).name or text)


def check_output(out: Path, output_format: str) -> None:
    """Refuse, before any work, an --out that the export could only fail on at its end."""
    if output_format == "onnx":
        if out.is_dir():
            raise SslamError(f"--out {out} is a folder; ONNX export writes one file: give a file name (e.g. "
                             f"{out / 'sslam.onnx'})")
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as error:
            raise SslamError(f"ONNX export needs onnx and onnxscript ({error}): pip install 'sslam[embeddings]'"
                             ) from error
    elif out.exists() and not out.is_dir():
        raise SslamError(f"--out {out} exists and is a file; --format pretrained writes a folder "
                         "(model.safetensors + config.json): name a folder")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), None)
    if parent is not None and not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise SslamError(f"cannot write {out}: {parent} is not a writable folder")


def run(args: argparse.Namespace) -> int:
    if args.random_init == (args.checkpoint is not None):
        raise SslamError("give either a checkpoint or --random-init")
    check_output(args.out, args.format)
    if args.random_init:
        raw = section(load_yaml(args.config), "model.encoder", default={}) if args.config else {}
        encoder = random_encoder(from_dict(EncoderConfig, raw, where="model.encoder"), args.seed)
        source = f"random init (seed {args.seed})"
        settings = default_input(encoder.config, source)
    else:
        loaded = read_checkpoint(args.checkpoint, num_heads=args.num_heads, num_mel_bins=args.num_mel_bins)
        encoder, settings = build_encoder(loaded, args.which), input_settings(loaded)
        source = f"{portable_name(args.checkpoint)} ({args.which})"
    overrides = {"norm_mean": args.norm_mean, "norm_std": args.norm_std, "target_length": args.target_length}
    if any(value is not None for value in overrides.values()):
        settings = InputSettings(**{**settings.as_dict(), **{k: v for k, v in overrides.items() if v is not None}},
                                 source="command line")
    encoder.grid(settings.target_length)  # the recorded length must fit this encoder
    if args.format == "onnx":
        out = export_onnx(encoder, args.out, settings)
    else:
        out = save_pretrained(encoder, args.out, settings, source)
    print(f"wrote {out}")
    return 0


__all__ = ["export_onnx", "random_encoder", "save_pretrained"]
