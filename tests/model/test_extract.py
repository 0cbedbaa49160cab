import json

import numpy as np
import pytest
import soundfile
import torch

from sslam.audio import FrontEndConfig, load_fbank
from sslam.cli import main as cli_main
from sslam.configuration import to_dict
from sslam.model import AudioEncoder
from sslam.model.checkpoints import load_encoder

TARGET = 192  # frames: 12 time patches


@pytest.fixture
def checkpoint(tmp_path, tiny_config):
    encoder = AudioEncoder(tiny_config)
    path = tmp_path / "tiny.pt"
    torch.save({"format": "sslam", "version": 1, "model": {"encoder": to_dict(tiny_config), "decoder": None},
                "student": encoder.state_dict(), "teacher": None, "decoder": None, "stage": 1, "variant": None,
                "step": 0}, path)
    return path


@pytest.fixture
def clips(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "audio"
    folder.mkdir()
    soundfile.write(folder / "short.wav", 0.1 * rng.standard_normal(8000).astype(np.float32), 16000)  # 0.5 s
    soundfile.write(folder / "long_stereo.wav", 0.1 * rng.standard_normal((66150, 2)).astype(np.float32), 22050)
    soundfile.write(folder / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    return folder


@pytest.mark.parametrize("granularity", ["all", "frame", "utterance"])
def test_extract_granularities(tmp_path, checkpoint, clips, tiny_config, granularity):
    out = tmp_path / "features"
    audio = [clips / "short.wav", clips / "long_stereo.wav", clips / "silent.wav"]
    code = cli_main(["extract", str(checkpoint), *map(str, audio), "--out", str(out),
                     "--granularity", granularity, "--target-length", str(TARGET)])
    assert code == 0
    tokens = (TARGET // tiny_config.patch_size) * tiny_config.freq_patches
    expected_shape = {"all": (1 + tokens, tiny_config.embed_dim), "frame": (tokens, tiny_config.embed_dim),
                      "utterance": (tiny_config.embed_dim,)}[granularity]
    encoder = load_encoder(checkpoint)
    for stem in ["short", "long_stereo"]:
        features = np.load(out / f"{stem}.npy")
        assert features.shape == expected_shape
        fbank = load_fbank(clips / f"{stem}.wav", TARGET, config=FrontEndConfig(num_mel_bins=tiny_config.num_mel_bins))
        with torch.no_grad():
            reference = encoder(fbank.unsqueeze(0))[0].numpy()
        reference = {"all": reference, "frame": reference[1:], "utterance": reference[0]}[granularity]
        np.testing.assert_allclose(features, reference, rtol=1e-4, atol=1e-5)
    index = json.loads((out / "extract_index.json").read_text())["files"]
    assert "silent audio" in index["silent"]["skipped"]
    assert not (out / "silent.npy").exists()
    # 0.5 s = 48 frames -> 3 real time patches; 3 s is truncated to the 12 patches of the target
    assert index["short"]["real_time_patches"] == 3
    assert index["long_stereo"]["real_time_patches"] == TARGET // tiny_config.patch_size


def test_extract_rejects_bad_target_length_and_duplicate_names(tmp_path, checkpoint, clips, capsys):
    code = cli_main(["extract", str(checkpoint), str(clips / "short.wav"), "--out", str(tmp_path / "o"),
                     "--target-length", "100"])
    assert code == 1 and "multiple of the patch size" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "short.wav").write_bytes((clips / "short.wav").read_bytes())
    code = cli_main(["extract", str(checkpoint), str(clips / "short.wav"), str(other / "short.wav"),
                     "--out", str(tmp_path / "o"), "--target-length", str(TARGET)])
    assert code == 1 and "share the output name" in capsys.readouterr().err
