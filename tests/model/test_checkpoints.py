"""Checkpoint interop: fake fairseq / HF files are built here with the real key names."""
import argparse
import json
import sys
import types

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sslam.cli import main as cli_main
from sslam.runtime.configuration import to_dict
from sslam.model import AudioEncoder, Decoder2d, DecoderConfig, EMATeacher
from sslam.model.checkpoints.types import CheckpointError
from sslam.model.checkpoints.read import load_encoder, read_checkpoint

FRAMES = 64


def fairseq_encoder_keys(state, prefix=""):
    """Own encoder names -> fairseq layout A names (written out independently of the package's rules)."""
    image = prefix + "modality_encoders.IMAGE."
    renamed = {}
    for key, value in state.items():
        leaf = key.rsplit(".", 1)[-1]
        if key.startswith("patch_embed."):
            renamed[image + "local_encoder.proj." + leaf] = value
        elif key == "pos_embed":
            renamed[image + "fixed_positional_encoder.positions"] = value
        elif key == "cls_token":
            renamed[image + "extra_tokens"] = value
        elif key.startswith("pre_norm."):
            renamed[image + "context_encoder.norm." + leaf] = value
        else:
            renamed[prefix + key] = value  # blocks.* keep their names
    return renamed


def fairseq_decoder_keys(state):
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")  # layers.i.conv.weight | proj.weight
        if parts[0] == "layers":
            renamed[f"modality_encoders.IMAGE.decoder.blocks.{parts[1]}.0.{parts[-1]}"] = value
        else:
            renamed[f"modality_encoders.IMAGE.decoder.{key}"] = value
    return renamed


def fake_omegaconf_config(num_heads):
    """An object whose class pickles as omegaconf.dictconfig.DictConfig, nested like omegaconf's."""
    class DictConfig:
        def __init__(self, content):
            self.__dict__["_content"] = content
            self.__dict__["_parent"] = None

    class AnyNode:
        def __init__(self, value):
            self._val = value

    DictConfig.__module__, AnyNode.__module__ = "omegaconf.dictconfig", "omegaconf.nodes"
    DictConfig.__qualname__, AnyNode.__qualname__ = "DictConfig", "AnyNode"
    package = types.ModuleType("omegaconf")
    modules = {"omegaconf": package, "omegaconf.dictconfig": types.ModuleType("omegaconf.dictconfig"),
               "omegaconf.nodes": types.ModuleType("omegaconf.nodes")}
    modules["omegaconf.dictconfig"].DictConfig = DictConfig
    modules["omegaconf.nodes"].AnyNode = AnyNode
    model_cfg = DictConfig({"_name": AnyNode("data2vec_multi"), "num_heads": AnyNode(num_heads)})
    root = DictConfig({"common": DictConfig({"seed": AnyNode(1)}), "model": model_cfg})
    model_cfg.__dict__["_parent"] = root  # omegaconf nodes point back to their parents
    return root, modules


def save_with_fake_omegaconf(monkeypatch, payload_builder, path, num_heads):
    with monkeypatch.context() as patch:
        cfg, modules = fake_omegaconf_config(num_heads)
        for name, module in modules.items():
            patch.setitem(sys.modules, name, module)
        torch.save(payload_builder(cfg), path)
    assert "omegaconf" not in sys.modules  # loading must work without it


def perturbed(encoder):
    other = AudioEncoder(encoder.config)
    other.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return other


def same_outputs(a, b, config):
    x = torch.randn(2, FRAMES, config.num_mel_bins)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_fairseq_pretraining_round_trip(tmp_path, monkeypatch, tiny_config, tiny_decoder_config):
    student = AudioEncoder(tiny_config)
    teacher = EMATeacher(perturbed(student)).encoder
    decoder = Decoder2d(tiny_decoder_config, tiny_config.embed_dim)
    model_state = {**fairseq_encoder_keys(student.state_dict()), **fairseq_decoder_keys(decoder.state_dict()),
                   "_ema": fairseq_encoder_keys(teacher.state_dict())}
    path = tmp_path / "checkpoint_last.pt"
    save_with_fake_omegaconf(
        monkeypatch, lambda cfg: {"cfg": cfg, "model": model_state, "optimizer_history": [], "extra_state": {}},
        path, num_heads=tiny_config.num_heads)

    loaded = read_checkpoint(path, num_mel_bins=tiny_config.num_mel_bins)
    assert loaded.encoder_config == tiny_config  # heads from the stubbed cfg, the rest from shapes
    assert loaded.meta["format"] == "fairseq-pretraining"
    assert loaded.meta["decoder_config"] == tiny_decoder_config
    same_outputs(load_encoder(path, "student", num_mel_bins=tiny_config.num_mel_bins), student, tiny_config)
    same_outputs(load_encoder(path, "teacher", num_mel_bins=tiny_config.num_mel_bins), teacher, tiny_config)
    for key, value in decoder.state_dict().items():
        torch.testing.assert_close(loaded.decoder[key], value)


def test_fairseq_finetuned_layout_with_head(tmp_path, tiny_config):
    student = AudioEncoder(tiny_config)
    head = {"fc_norm.weight": torch.rand(tiny_config.embed_dim), "fc_norm.bias": torch.rand(tiny_config.embed_dim),
            "head.weight": torch.randn(5, tiny_config.embed_dim), "head.bias": torch.randn(5)}
    path = tmp_path / "finetuned.pt"
    args = argparse.Namespace(num_heads=tiny_config.num_heads, lr=[5e-5])  # older fairseq files pickle args
    torch.save({"args": args, "model": {**fairseq_encoder_keys(student.state_dict(), "model."), **head}}, path)
    loaded = read_checkpoint(path, num_mel_bins=tiny_config.num_mel_bins)
    assert loaded.meta["format"] == "fairseq-finetuned"
    assert loaded.teacher is None and loaded.decoder is None
    assert set(loaded.head) == set(head)
    same_outputs(load_encoder(path, num_mel_bins=tiny_config.num_mel_bins), student, tiny_config)
    with pytest.raises(CheckpointError, match="no teacher"):
        load_encoder(path, "teacher", num_mel_bins=tiny_config.num_mel_bins)


def test_hf_safetensors_layout_with_config_json(tmp_path, tiny_config):
    student = AudioEncoder(tiny_config)
    hf_state = {}
    for key, value in fairseq_encoder_keys(student.state_dict()).items():
        key = key.replace("modality_encoders.IMAGE.", "").replace("context_encoder.norm", "pre_norm")
        hf_state["model." + key] = value.contiguous()
    folder = tmp_path / "eat_hf"
    folder.mkdir()
    save_file(hf_state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({
        "embed_dim": tiny_config.embed_dim, "depth": tiny_config.depth, "num_heads": tiny_config.num_heads,
        "mel_bins": tiny_config.num_mel_bins, "max_length": tiny_config.max_time_patches, "model_variant": "pretrain"}))
    loaded = read_checkpoint(folder / "model.safetensors")
    assert loaded.encoder_config == tiny_config
    same_outputs(load_encoder(folder / "model.safetensors"), student, tiny_config)


def own_checkpoint(path, student, teacher, decoder, decoder_config):
    torch.save({"format": "sslam", "version": 1,
                "model": {"encoder": to_dict(student.config), "decoder": to_dict(decoder_config)},
                "student": student.state_dict(), "teacher": teacher.state_dict(), "decoder": decoder.state_dict(),
                "stage": 2, "variant": "SSLAM", "step": 7, "rng": {"python": (3, (1, 2), None)}}, path)


def test_own_format_and_convert_to_safetensors(tmp_path, tiny_config, tiny_decoder_config):
    student = AudioEncoder(tiny_config)
    teacher = perturbed(student)
    path = tmp_path / "own.pt"
    own_checkpoint(path, student, teacher, Decoder2d(tiny_decoder_config, tiny_config.embed_dim), tiny_decoder_config)
    loaded = read_checkpoint(path)
    assert (loaded.meta["stage"], loaded.meta["variant"], loaded.meta["step"]) == (2, "SSLAM", 7)
    assert loaded.meta["decoder_config"] == tiny_decoder_config

    out = tmp_path / "converted" / "teacher.safetensors"
    assert cli_main(["convert", str(path), str(out), "--which", "teacher"]) == 0
    with safe_open(str(out), framework="pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert {"model.local_encoder.proj.weight", "model.pre_norm.weight", "model.extra_tokens",
            "model.fixed_positional_encoder.positions", "model.blocks.1.mlp.fc2.bias"} <= keys
    assert all(key.startswith("model.") for key in keys)
    assert json.loads(metadata["sslam_encoder_config"]) == to_dict(tiny_config)
    same_outputs(load_encoder(out), teacher, tiny_config)


def test_unknown_key_raises_naming_it(tmp_path, tiny_config):
    state = fairseq_encoder_keys(AudioEncoder(tiny_config).state_dict())
    state["modality_encoders.IMAGE.alibi_scale"] = torch.zeros(1)
    path = tmp_path / "odd.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="alibi_scale"):
        read_checkpoint(path, num_heads=tiny_config.num_heads, num_mel_bins=tiny_config.num_mel_bins)


def test_stored_positional_table_mismatch_warns_and_is_regenerated(tmp_path, tiny_config):
    student = AudioEncoder(tiny_config)
    state = student.state_dict()
    state["pos_embed"] = state["pos_embed"] + 0.5
    path = tmp_path / "encoder.pt"
    torch.save(state, path)  # a bare encoder state_dict
    with pytest.warns(UserWarning, match="positional table"):
        encoder = load_encoder(path, num_heads=tiny_config.num_heads, num_mel_bins=tiny_config.num_mel_bins)
    torch.testing.assert_close(encoder.pos_embed, student.pos_embed)


class _WritesAFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))  # would create the file if the unpickler called it


def test_restricted_unpickler_refuses_code_running_globals(tmp_path, tiny_config):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "hostile.pt"
    torch.save({"model": fairseq_encoder_keys(AudioEncoder(tiny_config).state_dict()),
                "extra_state": _WritesAFile(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"hostile\.pt: refused: loading it would run io\.open"):
        read_checkpoint(path, num_heads=tiny_config.num_heads, num_mel_bins=tiny_config.num_mel_bins)
    assert not marker.exists()


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(junk)
    with pytest.raises(CheckpointError, match="which"):
        load_encoder(junk, which="ema")


def test_default_decoder_config_is_inferred_from_official_shapes():
    from sslam.model.checkpoints.read import infer_decoder_config
    state = Decoder2d(DecoderConfig(), 768).state_dict()
    assert infer_decoder_config(state) == DecoderConfig()


def test_official_dimensions_are_inferred_from_shapes_alone(tmp_path):
    from sslam.model import EncoderConfig

    official_width = EncoderConfig(depth=1)  # ViT-B width, one block to stay small
    student = AudioEncoder(official_width)
    path = tmp_path / "no_config.pt"
    torch.save({"model": fairseq_encoder_keys(student.state_dict())}, path)  # no cfg, no args
    loaded = read_checkpoint(path)
    assert loaded.encoder_config == official_width  # 12 heads, 128 bins, 768 time patches, ratio 4
    x = torch.randn(1, 32, official_width.num_mel_bins)
    torch.testing.assert_close(load_encoder(path)(x), student.eval()(x))
