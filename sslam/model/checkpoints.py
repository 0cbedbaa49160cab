"""Checkpoint interop: read the project's own files, fairseq EAT/SSLAM `.pt` files and EAT-style
Hugging Face safetensors into one in-memory form, and convert any of them to safetensors.

Supported layouts (docs/checkpoints.md has the full key tables):

* own:  `torch.save` dict with ``format: "sslam"`` (docs/architecture.md), or a bare encoder state_dict;
* A:    fairseq pre-training ``ckpt["model"]``: ``modality_encoders.IMAGE.*`` + ``blocks.*`` and the
        teacher as a flat dict under ``_ema``;
* B:    fairseq fine-tuned ``ckpt["model"]``: the same keys prefixed with ``model.``, plus ``fc_norm``/``head``;
* C:    HF safetensors: ``model.local_encoder…``, ``model.pre_norm…``, ``model.blocks…`` (+ ``model.head``).

Foreign names are mapped with commented regex rules (in the style of torchaudio's fairseq importer);
a name no rule explains raises, so a layout we do not understand is never half-loaded. Dimensions
are read off the tensor shapes. fairseq files pickle omegaconf/argparse objects: they are read
with a restricted unpickler that replaces every class outside a short allow-list by an inert stub,
so neither fairseq nor omegaconf is needed and no code from the file is ever executed.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sslam.configuration import from_dict, to_dict
from sslam.errors import SslamError
from sslam.io import atomic_path
from sslam.model.config import DecoderConfig, EncoderConfig
from sslam.model.encoder import AudioEncoder, sincos_table


class CheckpointError(SslamError, ValueError):
    """A checkpoint cannot be read: unknown layout, unknown key, inconsistent shapes."""


@dataclass
class LoadedCheckpoint:
    """Weights in this package's own key names (`AudioEncoder` / `Decoder2d` state_dicts)."""

    encoder_config: EncoderConfig
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor] | None = None
    decoder: dict[str, torch.Tensor] | None = None
    head: dict[str, torch.Tensor] | None = None  # foreign layouts: fc_norm.{weight,bias}, head.{weight,bias}
    meta: dict[str, Any] = field(default_factory=dict)  # format, path, stage, variant, step, decoder_config


# ---------------------------------------------------------------------------------------------- unpickling
class _Stub:
    """Stand-in for any class the allow-list does not name: it accepts whatever the pickle
    stream constructs it with and stores it as inert data (`args`, `state`)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Stub":
        # NEWOBJ calls only __new__, REDUCE calls both: record the arguments here.
        stub = object.__new__(cls)
        stub.args, stub.state = args, None
        return stub

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


# Callables a torch checkpoint needs to rebuild tensors; all of them only build data.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"), ("torch", "Tensor"), ("torch", "Size"), ("torch", "device"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
}


class RestrictedUnpickler(pickle.Unpickler):
    _stubs: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _ALLOWED_GLOBALS or is_dtype:
            return super().find_class(module, name)
        qualified = f"{module}.{name}"
        if qualified not in self._stubs:
            self._stubs[qualified] = type(name, (_Stub,), {"__module__": module})
        return self._stubs[qualified]


# torch.load wants a module-like object with `Unpickler` and `load`.
_restricted_pickle = types.ModuleType("sslam_restricted_pickle")
_restricted_pickle.Unpickler = RestrictedUnpickler
_restricted_pickle.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()


def restricted_torch_load(path: str | Path) -> Any:
    # weights_only=False only because torch refuses a custom pickle module otherwise; the
    # restriction is our unpickler's allow-list.
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)


def find_setting(root: Any, name: str) -> Any:
    """Best-effort, breadth-first (shallowest wins) search for setting `name` inside stubbed
    omegaconf/argparse objects; omegaconf keeps values in `_content` dicts of nodes holding `_val`."""
    queue, seen = [root], set()
    while queue:
        node = queue.pop(0)
        if id(node) in seen:  # omegaconf nodes point back to their parents
            continue
        seen.add(id(node))
        if isinstance(node, _Stub):
            queue.extend([node.state, node.args])
        elif isinstance(node, dict):
            if name in node:
                value = node[name]
                if isinstance(value, _Stub) and isinstance(value.state, dict):
                    value = value.state.get("_val")
                return value
            queue.extend(node.values())
        elif isinstance(node, (list, tuple)):
            queue.extend(node)
    return None


# ---------------------------------------------------------------------------------------------- key maps
# Foreign name (with its layout prefix removed by _PREFIX below) -> (part, own name).
_KEY_RULES: list[tuple[re.Pattern[str], str, str]] = [
    # patch-embedding convolution (fairseq PatchEmbed "local_encoder.proj")
    (re.compile(r"local_encoder\.proj\.(weight|bias)"), "encoder", r"patch_embed.\1"),
    # fixed 2-D sin-cos table; regenerated on load and only compared with the stored copy
    (re.compile(r"fixed_positional_encoder\.positions"), "encoder", "pos_embed"),
    # the single extra token is the CLS token
    (re.compile(r"extra_tokens"), "encoder", "cls_token"),
    # the LayerNorm before block 0: fairseq "context_encoder.norm", HF "pre_norm"
    (re.compile(r"(?:context_encoder\.norm|pre_norm)\.(weight|bias)"), "encoder", r"pre_norm.\1"),
    # post-norm blocks: our block modules carry the official (timm-like) names
    (re.compile(r"(blocks\.\d+\.(?:norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(?:weight|bias))"),
     "encoder", r"\1"),
    # Decoder2d layer i is a Sequential(conv, LayerNorm without affine, GELU): only index 0 has weights
    (re.compile(r"decoder\.blocks\.(\d+)\.0\.(weight|bias)"), "decoder", r"layers.\1.conv.\2"),
    # the decoder's final Linear
    (re.compile(r"decoder\.proj\.(weight|bias)"), "decoder", r"proj.\1"),
    # fine-tuning head: LayerNorm on the CLS token, then the classifier
    (re.compile(r"(fc_norm|head)\.(weight|bias)"), "head", r"\1.\2"),
]
# fairseq fine-tuned files prefix everything with "model.", HF files too; pre-training files
# put the modality-specific parts under "modality_encoders.IMAGE.".
_PREFIX = re.compile(r"^(?:model\.)?(?:modality_encoders\.IMAGE\.)?")
_OWN_ENCODER_KEY = "patch_embed.weight"

# Own name -> layout C name, for `convert`.
_TO_HF = [
    (re.compile(r"patch_embed\.(weight|bias)"), r"model.local_encoder.proj.\1"),
    (re.compile(r"pos_embed"), "model.fixed_positional_encoder.positions"),
    (re.compile(r"cls_token"), "model.extra_tokens"),
    (re.compile(r"(pre_norm|blocks|fc_norm|head)\.(.+)"), r"model.\1.\2"),
]
# EAT's Hugging Face config.json names -> EncoderConfig fields
_HF_CONFIG_NAMES = {
    "embed_dim": "embed_dim", "depth": "depth", "num_heads": "num_heads", "mlp_ratio": "mlp_ratio",
    "patch_size": "patch_size", "mel_bins": "num_mel_bins", "max_length": "max_time_patches",
    "qkv_bias": "qkv_bias", "norm_eps": "norm_eps",
}


def map_foreign_keys(state: dict[str, Any], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """Split a foreign state_dict into {"encoder", "decoder", "head"} dicts with our names."""
    parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "decoder": {}, "head": {}}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        stripped = _PREFIX.sub("", key, count=1)
        for pattern, part, replacement in _KEY_RULES:
            if pattern.fullmatch(stripped):
                parts[part][pattern.sub(replacement, stripped)] = value.float()
                break
        else:
            raise CheckpointError(f"{source}: unexpected key {key!r} (no rule maps it; layout not supported)")
    return parts


def infer_encoder_config(state: dict[str, torch.Tensor], known: dict[str, Any], source: str) -> EncoderConfig:
    """Read the architecture off the tensor shapes; `known` (from metadata) fills what shapes cannot tell."""
    if _OWN_ENCODER_KEY not in state:
        raise CheckpointError(f"{source}: no patch-embedding weight found; is this an encoder checkpoint?")
    embed_dim, _, patch_size, _ = state[_OWN_ENCODER_KEY].shape
    block_ids = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if block_ids != set(range(len(block_ids))):
        raise CheckpointError(f"{source}: block indices are not contiguous: {sorted(block_ids)}")
    shape_derived: dict[str, Any] = {
        "embed_dim": embed_dim, "patch_size": patch_size, "depth": len(block_ids),
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
    }
    if "blocks.0.mlp.fc1.weight" in state:
        shape_derived["mlp_ratio"] = state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    for name, value in known.items():
        if name in shape_derived and shape_derived[name] != value:
            raise CheckpointError(f"{source}: metadata says {name}={value} but the weights say {shape_derived[name]}")
    values = {**known, **shape_derived}
    if "num_heads" not in values:
        if embed_dim % 64:
            raise CheckpointError(f"{source}: cannot infer num_heads for width {embed_dim}; pass num_heads")
        values["num_heads"] = embed_dim // 64  # ViT convention: 64-dimensional heads
    if "pos_embed" in state and "max_time_patches" not in known:
        freq_patches = values.get("num_mel_bins", EncoderConfig.num_mel_bins) // patch_size
        rows = state["pos_embed"].shape[1]
        if rows % freq_patches:
            raise CheckpointError(f"{source}: positional table of {rows} rows does not fit {freq_patches} freq patches")
        values["max_time_patches"] = rows // freq_patches
    return from_dict(EncoderConfig, values, where=f"{source} encoder config")


def regenerate_pos_table(state: dict[str, torch.Tensor] | None, config: EncoderConfig, source: str) -> None:
    """Replace the stored sin-cos table by a freshly computed one, warning if they disagree."""
    if state is None:
        return
    table = sincos_table(config.embed_dim, config.max_time_patches, config.freq_patches)
    stored = state.get("pos_embed")
    # The tolerance admits a table stored in half precision; a wrong layout differs by O(1).
    if stored is not None and (stored.shape != table.shape or not torch.allclose(stored.float(), table, atol=1e-2)):
        warnings.warn(f"{source}: stored positional table differs from the regenerated sin-cos table; using the "
                      "regenerated one", stacklevel=3)
    state["pos_embed"] = table


def infer_decoder_config(decoder: dict[str, torch.Tensor]) -> DecoderConfig | None:
    if not decoder:
        return None
    if "layers.0.conv.weight" not in decoder:
        raise CheckpointError(f"decoder weights without a first convolution: {sorted(decoder)[:4]}")
    first = decoder["layers.0.conv.weight"]  # (D, D / groups, k, k)
    depth = len({k.split(".")[1] for k in decoder if k.startswith("layers.")})
    return DecoderConfig(depth=depth, groups=first.shape[0] // first.shape[1], kernel=first.shape[-1])


# ---------------------------------------------------------------------------------------------- readers
def _as_config(cls: type, value: Any, where: str) -> Any:
    """A stored config: a dict (the documented form), the dataclass itself, or None."""
    if value is None or isinstance(value, cls):
        return value
    return from_dict(cls, value, where=where)


def _read_own(ckpt: dict[str, Any], source: str) -> LoadedCheckpoint:
    model = ckpt.get("model", {})
    config = _as_config(EncoderConfig, model.get("encoder"), f"{source} model.encoder")
    decoder_config = _as_config(DecoderConfig, model.get("decoder"), f"{source} model.decoder")
    if config is None or ckpt.get("student") is None:
        raise CheckpointError(f"{source}: a sslam checkpoint needs model.encoder and student entries")
    meta = {k: ckpt.get(k) for k in ("stage", "variant", "step", "input")}  # input: norm stats, target length
    meta.update(format="sslam", version=ckpt.get("version"), decoder_config=decoder_config)
    return LoadedCheckpoint(config, dict(ckpt["student"]), ckpt.get("teacher"), ckpt.get("decoder"),
                            ckpt.get("head"), meta)


def _read_foreign(state: dict[str, Any], known: dict[str, Any], source: str, layout: str) -> LoadedCheckpoint:
    state = dict(state)
    ema = state.pop("_ema", None)
    parts = map_foreign_keys(state, source)
    config = infer_encoder_config(parts["encoder"], known, source)
    teacher = None
    if ema:
        teacher = map_foreign_keys(ema, f"{source} _ema")["encoder"]  # the teacher never holds a decoder
    meta = {"format": layout, "decoder_config": infer_decoder_config(parts["decoder"])}
    return LoadedCheckpoint(config, parts["encoder"], teacher, parts["decoder"] or None, parts["head"] or None, meta)


def _read_safetensors(path: Path, known: dict[str, Any]) -> LoadedCheckpoint:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    if "sslam_encoder_config" in metadata:
        known = {**json.loads(metadata["sslam_encoder_config"]), **known}
    else:
        sibling = path.with_name("config.json")  # a Hugging Face model folder carries EAT's config here
        if sibling.is_file():
            hf_config = json.loads(sibling.read_text())
            known = {**{ours: hf_config[theirs] for theirs, ours in _HF_CONFIG_NAMES.items() if theirs in hf_config},
                     **known}
    if _OWN_ENCODER_KEY in state:
        config = infer_encoder_config(state, known, str(path))
        return LoadedCheckpoint(config, state, meta={"format": "sslam-safetensors"})
    return _read_foreign(state, known, str(path), layout="hf-safetensors")


def _read_torch_file(path: Path, known: dict[str, Any]) -> LoadedCheckpoint:
    try:
        ckpt = restricted_torch_load(path)
    except Exception as error:  # a corrupt or non-torch file: report it as a user error
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: {error}") from error
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if ckpt.get("format") == "sslam":
        return _read_own(ckpt, str(path))
    if _OWN_ENCODER_KEY in ckpt:  # a bare AudioEncoder state_dict
        return LoadedCheckpoint(infer_encoder_config(ckpt, known, str(path)), dict(ckpt), meta={"format": "state_dict"})
    if isinstance(ckpt.get("model"), dict):
        if "num_heads" not in known:  # fairseq keeps its model config in cfg (omegaconf) or args (argparse)
            heads = find_setting(ckpt.get("cfg"), "num_heads") or find_setting(ckpt.get("args"), "num_heads")
            if isinstance(heads, int):
                known = {**known, "num_heads": heads}
        # fine-tuned files (layout B) prefix every encoder key with "model."
        layout = "fairseq-finetuned" if any(k.startswith("model.") for k in ckpt["model"]) else "fairseq-pretraining"
        return _read_foreign(ckpt["model"], known, str(path), layout)
    raise CheckpointError(f"{path}: not a sslam, fairseq or encoder state_dict checkpoint "
                          f"(top-level keys: {sorted(map(str, ckpt))[:8]})")


def read_checkpoint(
    path: str | Path, num_heads: int | None = None, num_mel_bins: int | None = None
) -> LoadedCheckpoint:
    """Read any supported checkpoint: a file, an hf: id or a model folder (sslam.model.hub). `num_heads`/
    `num_mel_bins` fill in what tensor shapes cannot tell for foreign files without a config (defaults:
    width/64 heads, 128 mel bins)."""
    from sslam.model.hub import resolve_checkpoint  # hf: ids and model folders -> one weights file

    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    known = {k: v for k, v in {"num_heads": num_heads, "num_mel_bins": num_mel_bins}.items() if v is not None}
    loaded = _read_safetensors(path, known) if path.suffix == ".safetensors" else _read_torch_file(path, known)
    loaded.meta["path"] = str(path)
    regenerate_pos_table(loaded.student, loaded.encoder_config, str(path))
    regenerate_pos_table(loaded.teacher, loaded.encoder_config, f"{path} teacher")
    return loaded


def load_encoder(path: str | Path, which: str = "student", **overrides: Any) -> AudioEncoder:
    """An `AudioEncoder` (eval mode) holding the student or the EMA teacher of any supported checkpoint."""
    _check_which(which)
    return build_encoder(read_checkpoint(path, **overrides), which)


def build_encoder(loaded: LoadedCheckpoint, which: str = "student") -> AudioEncoder:
    """An `AudioEncoder` (eval mode) from an already read checkpoint."""
    _check_which(which)
    state = loaded.student if which == "student" else loaded.teacher
    source = f"{loaded.meta.get('path')} ({which})"
    if state is None:
        raise CheckpointError(f"{source}: this checkpoint holds no {which} weights")
    encoder = AudioEncoder(loaded.encoder_config)
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"{source}: weights do not fit {loaded.encoder_config}: {error}") from error
    if missing or unexpected:
        raise CheckpointError(f"{source}: missing keys {missing}, unexpected keys {unexpected}")
    return encoder.eval()


def _check_which(which: str) -> None:
    if which not in ("student", "teacher"):
        raise CheckpointError(f"which must be 'student' or 'teacher', got {which!r}")


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
    parser.add_argument("--which", choices=["student", "teacher"], default="student")
    parser.add_argument("--num-heads", type=int, default=None, help="override (default: from metadata or width/64)")
    parser.add_argument("--num-mel-bins", type=int, default=None, help="override (default: from metadata or 128)")


def run(args: argparse.Namespace) -> int:
    out = convert(args.input, args.output, args.which, num_heads=args.num_heads, num_mel_bins=args.num_mel_bins)
    print(f"wrote {out}")
    return 0


__all__ = ["CheckpointError", "LoadedCheckpoint", "build_encoder", "convert", "load_encoder", "read_checkpoint"]
