"""`sslam export`: ONNX with dynamic batch and time (checked against onnxruntime), the save_pretrained
folder read back by load_encoder, and random-init checkpoints."""
import json

import numpy as np
import pytest
import torch
import yaml

from embed_helpers import TINY, TRAINED_INPUT, same_outputs, tiny_encoder, write_project_checkpoint
from sslam.cli import main as cli_main
from sslam.embeddings.api import load_encoder as load_embedder
from sslam.model import EncoderConfig
from sslam.model.checkpoints.read import load_encoder, read_checkpoint
from sslam.model.checkpoints.export import random_encoder
from sslam.model.checkpoints.settings import input_settings


def test_onnx_export_matches_onnxruntime_for_other_batch_and_time_sizes(tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    encoder = tiny_encoder()
    checkpoint = write_project_checkpoint(tmp_path / "checkpoint.pt", encoder)
    target = tmp_path / "encoder.onnx"
    assert cli_main(["export", str(checkpoint), "--format", "onnx", "--out", str(target)]) == 0
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    patch, bins = encoder.config.patch_size, encoder.config.num_mel_bins
    # the export example was (2, 192 frames): other batch sizes and lengths must work too
    for batch, frames in [(1, patch), (3, 5 * patch), (2, encoder.config.max_time_patches * patch)]:
        fbank = torch.randn(batch, frames, bins)
        (tokens,) = session.run(None, {"fbank": fbank.numpy()})
        with torch.no_grad():
            expected = encoder(fbank).numpy()
        assert tokens.shape == expected.shape == (batch, 1 + frames // patch * encoder.config.freq_patches,
                                                  encoder.config.embed_dim)
        assert np.abs(tokens - expected).max() <= 1e-4
    properties = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert float(properties["norm_mean"]) == TRAINED_INPUT["norm_mean"]
    assert int(properties["target_length"]) == TRAINED_INPUT["target_length"]
    assert json.loads(properties["sslam_encoder_config"])["num_heads"] == TINY["num_heads"]


def test_pretrained_folder_round_trip_through_every_loader(tmp_path):
    encoder = tiny_encoder()
    checkpoint = write_project_checkpoint(tmp_path / "checkpoint.pt", encoder)
    folder = tmp_path / "pretrained"
    assert cli_main(["export", str(checkpoint), "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["embed_dim"] == TINY["embed_dim"] and config["mel_bins"] == TINY["num_mel_bins"]
    assert same_outputs(load_encoder(folder), encoder)
    assert input_settings(read_checkpoint(folder)).as_dict() == TRAINED_INPUT
    embedder = load_embedder(folder, device="cpu")
    assert embedder.window == TRAINED_INPUT["target_length"]
    again = tmp_path / "again"
    embedder.save_pretrained(again)
    from safetensors import safe_open

    def contents(path):  # the metadata's key order is not fixed in the file: compare contents
        with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
            return handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}

    (meta, tensors), (meta_again, tensors_again) = contents(folder), contents(again)
    assert meta == meta_again and tensors.keys() == tensors_again.keys()
    assert all(torch.equal(tensors[key], tensors_again[key]) for key in tensors)
    assert json.loads((again / "config.json").read_text())["norm_std"] == TRAINED_INPUT["norm_std"]


def test_random_init_export_from_a_study_config(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"model": {"encoder": dict(TINY)}}))
    first, second = tmp_path / "a", tmp_path / "b"
    for out, seed in ((first, "3"), (second, "3")):
        assert cli_main(["export", "--random-init", "--config", str(study), "--seed", seed, "--out", str(out)]) == 0
    loaded = read_checkpoint(first)
    assert loaded.encoder_config == EncoderConfig(**TINY)
    assert same_outputs(load_encoder(first), load_encoder(second))  # same seed, same weights
    assert same_outputs(load_encoder(first), random_encoder(EncoderConfig(**TINY), seed=3))
    assert not same_outputs(random_encoder(EncoderConfig(**TINY), seed=4), random_encoder(EncoderConfig(**TINY), 3))
    state = torch.get_rng_state()
    random_encoder(EncoderConfig(**TINY), seed=5)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left alone
    capsys.readouterr()
    assert cli_main(["export", "--out", str(tmp_path / "c")]) == 1
    assert "either a checkpoint or --random-init" in capsys.readouterr().err


def test_an_output_the_export_cannot_write_is_one_line_before_the_work(tmp_path, capsys, monkeypatch):
    checkpoint = write_project_checkpoint(tmp_path / "checkpoint.pt", tiny_encoder())
    existing = tmp_path / "existing"
    existing.mkdir()
    (tmp_path / "file.txt").write_text("x")
    read = []  # the checkpoint must not even be read: the check comes before the work
    import sslam.model.checkpoints.export as export

    monkeypatch.setattr(export, "read_checkpoint", lambda *a, **k: read.append(a) or pytest.fail("read"))
    cases = [(["--format", "onnx", "--out", str(existing)], "is a folder; ONNX export writes one file"),
             (["--format", "pretrained", "--out", str(tmp_path / "file.txt")], "exists and is a file"),
             (["--format", "onnx", "--out", str(tmp_path / "file.txt" / "m.onnx")], "is not a writable folder")]
    for arguments, message in cases:
        capsys.readouterr()
        assert cli_main(["export", str(checkpoint), *arguments]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert read == [] and list(existing.iterdir()) == []


def test_an_exported_config_records_no_local_path(tmp_path):
    checkpoint = write_project_checkpoint(tmp_path / "deep" / "folder" / "checkpoint.pt", tiny_encoder())
    assert cli_main(["export", str(checkpoint.resolve()), "--out", str(tmp_path / "exported")]) == 0
    text = (tmp_path / "exported" / "config.json").read_text()
    assert json.loads(text)["source"] == "checkpoint.pt (student)"
    assert str(tmp_path) not in text
