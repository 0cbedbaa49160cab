"""Checkpoint interop: read the project's own files, fairseq EAT/SSLAM `.pt` files and EAT-style
Hugging Face safetensors into one in-memory form (`sslam.model.checkpoints.convert` writes any of them as
safetensors).

Supported layouts (docs/checkpoints.md has the full key tables):

* own:  `torch.save` dict with ``format: "sslam"`` (docs/architecture.md), or a bare encoder state_dict;
* A:    fairseq pre-training ``ckpt["model"]``: ``modality_encoders.IMAGE.*`` + ``blocks.*`` and the
        teacher as a flat dict under ``_ema``;
* B:    fairseq fine-tuned ``ckpt["model"]``: the same keys prefixed with ``model.``, plus ``fc_norm``/``head``;
* C:    HF safetensors: ``model.local_encoder…``, ``model.pre_norm…``, ``model.blocks…`` (+ ``model.head``).

Foreign names are mapped with commented regex rules (in the style of torchaudio's fairseq importer);
a name no rule explains raises, so a layout we do not understand is never half-loaded. Dimensions
are read off the tensor shapes. fairseq files pickle omegaconf/argparse objects: they are read
with the restricted unpickler of `sslam.model.checkpoints.unpickler`, which keeps such config objects as inert
stubs (neither fairseq nor omegaconf is needed) and refuses a file that would run code while loading.

Every weight is checked before it reaches a model: it must be a floating-point tensor without NaN/inf
(an integer or bool tensor would be cast into garbage features), float16/bfloat16/float64 weights are
converted to float32 with one warning, and shapes are compared with the model key by key. A truncated
or corrupt file, safetensors or `.pt`, is one CheckpointError line.
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sslam.model.checkpoints.routes import resolve_checkpoint  # hf: ids and model folders -> one weights file
from sslam.model.checkpoints.types import CheckpointError, LoadedCheckpoint, UnsafeCheckpointError
from sslam.model.checkpoints.unpickler import RefusedPickleError, find_setting, restricted_torch_load
from sslam.model.config import DecoderConfig, EncoderConfig
from sslam.model.encoder import AudioEncoder, sincos_table
from sslam.runtime.configuration import from_dict
from sslam.runtime.errors import SslamError, first_line

log = logging.getLogger(__name__)


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
                parts[part][pattern.sub(replacement, stripped)] = value  # dtypes: check_weights
                break
        else:
            raise CheckpointError(f"{source}: unexpected key {key!r} (no rule maps it; layout not supported)")
    return parts


def infer_encoder_config(state: dict[str, torch.Tensor], known: dict[str, Any], source: str) -> EncoderConfig:
    """Read the architecture off the tensor shapes; `known` (from metadata) fills what shapes cannot tell."""
    if _OWN_ENCODER_KEY not in state:
        raise CheckpointError(f"{source}: no patch-embedding weight found; is this an encoder checkpoint?")
    patch_weight = state[_OWN_ENCODER_KEY]
    if not isinstance(patch_weight, torch.Tensor) or patch_weight.ndim != 4:
        raise CheckpointError(f"{source}: {_OWN_ENCODER_KEY} must be a 4-D tensor (D, 1, patch, patch), got "
                              f"{tuple(patch_weight.shape) if isinstance(patch_weight, torch.Tensor) else type(patch_weight).__name__}")
    embed_dim, _, patch_size, _ = patch_weight.shape
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
    if not isinstance(first, torch.Tensor) or first.ndim != 4 or min(first.shape) < 1:
        raise CheckpointError("decoder layers.0.conv.weight must be a non-empty 4-D tensor (D, D / groups, k, k)")
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
    if not isinstance(model, dict):
        raise CheckpointError(f"{source}: model must be a mapping with encoder/decoder configs, got {type(model).__name__}")
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


def _read_json(text: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{source} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{source} must be a JSON object, got {type(value).__name__}")
    return value


def _read_safetensors(path: Path, known: dict[str, Any]) -> LoadedCheckpoint:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # SafetensorError, OSError...: a truncated or corrupt file
        raise CheckpointError(f"cannot read {path} as safetensors (truncated or corrupt?): {first_line(error)}") from error
    if "sslam_encoder_config" in metadata:
        known = {**_read_json(metadata["sslam_encoder_config"], f"{path} metadata sslam_encoder_config"), **known}
    else:
        sibling = path.with_name("config.json")  # a Hugging Face model folder carries EAT's config here
        if sibling.is_file():
            hf_config = _read_json(sibling.read_text(errors="replace"), str(sibling))
            known = {**{ours: hf_config[theirs] for theirs, ours in _HF_CONFIG_NAMES.items() if theirs in hf_config},
                     **known}
    if _OWN_ENCODER_KEY in state:
        config = infer_encoder_config(state, known, str(path))
        return LoadedCheckpoint(config, state, meta={"format": "sslam-safetensors"})
    return _read_foreign(state, known, str(path), layout="hf-safetensors")


def _read_torch_file(path: Path, known: dict[str, Any]) -> LoadedCheckpoint:
    try:
        ckpt = restricted_torch_load(path)
    except RefusedPickleError as error:
        raise UnsafeCheckpointError(str(error)) from None
    except Exception as error:  # a truncated, corrupt or non-torch file: report it as a user error
        raise CheckpointError(f"cannot read {path} as a torch checkpoint (truncated or corrupt?): "
                              f"{first_line(error)}") from error
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
    """Read any supported checkpoint: a file, an hf: id or a model folder (sslam.model.checkpoints.routes). `num_heads`/
    `num_mel_bins` fill in what tensor shapes cannot tell for foreign files without a config (defaults:
    width/64 heads, 128 mel bins)."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    known = {k: v for k, v in {"num_heads": num_heads, "num_mel_bins": num_mel_bins}.items() if v is not None}
    try:
        loaded = _read_safetensors(path, known) if path.suffix == ".safetensors" else _read_torch_file(path, known)
    except SslamError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        # Entries of the wrong kind deep inside a file of a known layout: still one line, never a traceback.
        raise CheckpointError(f"{path}: malformed checkpoint ({type(error).__name__}: {first_line(error)})") from error
    loaded.meta["path"] = str(path)
    check_weights(loaded, str(path))
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
    # Shapes first, before anything is built: the depth comes from the number of block keys, and a file of a
    # thousand blocks of empty tensors must not make us build a thousand real blocks.
    expected = encoder_state_shapes(loaded.encoder_config)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: missing keys {missing}, unexpected keys {unexpected}")
    for key, value in state.items():
        if tuple(value.shape) != expected[key]:
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)} but the model "
                                  f"({loaded.encoder_config}) needs {expected[key]}")
    encoder = AudioEncoder(loaded.encoder_config)   # now as large as the weights the file really holds
    encoder.load_state_dict(state)
    return encoder.eval()


def encoder_state_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every entry of `AudioEncoder(config).state_dict()`, without building it (a test holds the
    two equal). Weights that match these shapes are as large as the model, so building it after the comparison
    costs what the file holds; building it first would cost whatever depth and width the keys claim."""
    dim, hidden, patch = config.embed_dim, config.mlp_hidden_dim, config.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "pos_embed": (1, config.max_time_patches * config.freq_patches, dim),
        "cls_token": (1, 1, dim), "patch_embed.weight": (dim, 1, patch, patch), "patch_embed.bias": (dim,),
        "pre_norm.weight": (dim,), "pre_norm.bias": (dim,),
    }
    block = {"attn.qkv.weight": (3 * dim, dim), "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
             "norm1.weight": (dim,), "norm1.bias": (dim,), "mlp.fc1.weight": (hidden, dim), "mlp.fc1.bias": (hidden,),
             "mlp.fc2.weight": (dim, hidden), "mlp.fc2.bias": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,)}
    if config.qkv_bias:
        block["attn.qkv.bias"] = (3 * dim,)
    for index in range(config.depth):
        shapes.update({f"blocks.{index}.{name}": shape for name, shape in block.items()})
    return shapes


def check_weights(loaded: LoadedCheckpoint, source: str) -> None:
    """Refuse non-tensor, non-floating-point and non-finite weights, naming the key; convert the other
    floating dtypes to float32 in place, with one warning line for the whole file."""
    converted: Counter[str] = Counter()
    for part in ("student", "teacher", "decoder", "head"):
        state = getattr(loaded, part)
        if state is None:
            continue
        if not isinstance(state, dict):
            raise CheckpointError(f"{source}: {part} must be a mapping of weight names to tensors, "
                                  f"got {type(state).__name__}")
        for key, value in state.items():
            name = f"{part} weight {key!r}"
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{source}: {name} is a {type(value).__name__}, not a tensor")
            stored = value.untyped_storage().nbytes() - value.storage_offset() * value.element_size()
            if value.numel() * value.element_size() > stored:
                # A stride-0 or expanded view: a few stored bytes posing as a huge tensor, which every check
                # below (and the model) would materialise. torch.save never writes one for a real weight.
                raise CheckpointError(f"{source}: {name} is a {tuple(value.shape)} view of {stored:,} stored bytes "
                                      "(stride-0 or expanded tensor); weights must store every element")
            if not value.is_floating_point():
                raise CheckpointError(f"{source}: {name} has dtype {str(value.dtype).removeprefix('torch.')}; "
                                      "weights must be floating point (refusing to cast it into garbage)")
            if not torch.isfinite(value).all():
                raise CheckpointError(f"{source}: {name} contains NaN or inf values")
            if value.dtype != torch.float32:
                converted[str(value.dtype).removeprefix("torch.")] += 1
                state[key] = value.float()
        setattr(loaded, part, dict(state))
    if converted:
        kinds = ", ".join(f"{count} {dtype}" for dtype, count in sorted(converted.items()))
        log.warning("%s: converted %s weight tensor(s) to float32", source, kinds)



def _check_which(which: str) -> None:
    if which not in ("student", "teacher"):
        raise CheckpointError(f"which must be 'student' or 'teacher', got {which!r}")


__all__ = ["build_encoder", "check_weights", "infer_encoder_config", "load_encoder", "map_foreign_keys", "read_checkpoint"]
