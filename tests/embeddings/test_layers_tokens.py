"""Layer and token choice on every embedding path (sslam.encode, sslam extract, HEAR, X-ARES): layer -1 is
today's output, "all" gives depth + 1 layers, each layer is the encoder's own hidden state, the documented
shapes hold for one layer and for several."""
import json

import numpy as np
import pytest
import soundfile
import torch

import sslam
import sslam.embeddings.hear as hear
from embed_helpers import TINY, tiny_encoder, write_project_checkpoint
from sslam.audio.front_end import fit_length, load_raw_fbank, normalise
from sslam.cli import main as cli_main
from sslam.embeddings.api import Embedder
from sslam.embeddings.xares import SSLAMEncoder
from sslam.model.checkpoints.settings import InputSettings
from sslam.runtime.errors import SslamError

RATE, WINDOW, D, DEPTH = 16000, 192, TINY["embed_dim"], TINY["depth"]
FREQ_PATCHES = TINY["num_mel_bins"] // 16


@pytest.fixture
def model():
    return Embedder(tiny_encoder(), InputSettings(target_length=WINDOW))


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "clip.wav"
    soundfile.write(path, 0.1 * np.random.default_rng(0).standard_normal(int(2.5 * RATE)).astype(np.float32), RATE)
    return path


def hidden_states(encoder, fbank):
    """Every layer by hand: the pre-norm sequence, then each block's output."""
    with torch.no_grad():
        seq = encoder.add_cls_and_norm(encoder.embed(fbank[None]))
        states = [seq]
        for block in encoder.blocks:
            seq, _ = block(seq)
            states.append(seq)
    return [state[0] for state in states]


def test_layer_minus_one_is_todays_output_and_all_gives_every_layer(model, clip):
    default = sslam.encode(model, clip)[0]
    last = sslam.encode(model, clip, layers=-1)[0]
    by_number = sslam.encode(model, clip, layers=DEPTH)[0]
    for name in ("cls", "mean", "patch", "timestamp", "all"):
        assert torch.equal(default.tokens(name), last.tokens(name))
        assert torch.equal(default.tokens(name), by_number.tokens(name))
    every = sslam.encode(model, clip, layers="all")[0]
    assert every.layers == tuple(range(DEPTH + 1)) and every.scene.shape == (DEPTH + 1, D)
    for name in ("cls", "mean", "patch", "timestamp", "all"):
        stacked, single = every.tokens(name), default.tokens(name)
        assert stacked.shape == (DEPTH + 1, *single.shape)
        torch.testing.assert_close(stacked[-1], single, rtol=0, atol=1e-6)
    # a 2.5-s clip fits two windows of 192 frames: each layer of the first window is the encoder's own state
    raw = load_raw_fbank(clip, model.front_end)
    first = normalise(fit_length(raw[:WINDOW], WINDOW), model.settings.norm_mean, model.settings.norm_std)
    states = hidden_states(model.encoder, first)
    patches = every.patches  # (L, P, F_p, D)
    for layer, state in enumerate(states):
        tokens = state[1:].reshape(WINDOW // 16, FREQ_PATCHES, D)
        torch.testing.assert_close(patches[layer, :6], tokens[:6], rtol=0, atol=1e-5)  # patches the first window owns
    assert not torch.allclose(patches[0], patches[-1])
    picked = sslam.encode(model, clip, layers=[2, 0], tokens="cls")[0]
    torch.testing.assert_close(picked, every.scene[[2, 0]], rtol=0, atol=1e-6)


def test_documented_shapes_for_one_layer_and_several(model, clip):
    one = sslam.encode(model, clip, layers=1)[0]
    steps, covered = one.real_time_patches, one.patches.shape[0]
    tokens = covered * FREQ_PATCHES
    expected = {"cls": (D,), "utterance": (D,), "mean": (D,), "patch": (tokens, D), "frame": (tokens, D),
                "timestamp": (steps, D), "all": (1 + tokens, D)}
    several = sslam.encode(model, clip, layers="0,2")[0]
    for name, shape in expected.items():
        assert tuple(one.tokens(name).shape) == shape, name
        assert tuple(several.tokens(name).shape) == (2, *shape), name
    # mean = the patch tokens that hold audio, never the last window's padding
    torch.testing.assert_close(one.tokens("mean"), one.patches[:steps].reshape(-1, D).mean(0))
    with pytest.raises(SslamError, match="layer 5 does not exist"):
        sslam.encode(model, clip, layers=5)
    with pytest.raises(SslamError, match="tokens must be one of"):
        sslam.encode(model, clip, tokens="pooled")


def test_extract_layer_and_granularity(tmp_path, clip, capsys):
    checkpoint = write_project_checkpoint(tmp_path / "checkpoint.pt", tiny_encoder())
    base = ["extract", str(checkpoint), str(clip), "--num-workers", "0"]
    assert cli_main(base + ["--out", str(tmp_path / "default"), "--granularity", "cls"]) == 0
    assert cli_main(base + ["--out", str(tmp_path / "last"), "--granularity", "cls", "--layer", "-1"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "default" / "clip.npy"), np.load(tmp_path / "last" / "clip.npy"))
    assert cli_main(base + ["--out", str(tmp_path / "all"), "--granularity", "patch", "--layer", "all"]) == 0
    every = np.load(tmp_path / "all" / "clip.npy")
    index = json.loads((tmp_path / "all" / "extract_index.json").read_text())
    assert every.shape[0] == DEPTH + 1 and every.shape[2] == D and index["settings"]["layers"] == [0, 1, 2]
    assert cli_main(base + ["--out", str(tmp_path / "h5" / "f.h5"), "--format", "hdf5", "--granularity", "mean",
                            "--layer", "1"]) == 0
    import h5py

    with h5py.File(tmp_path / "h5" / "f.h5") as store:
        np.testing.assert_allclose(store["clip.wav"][()], every[1].reshape(-1, FREQ_PATCHES, D)[
            : index["files"]["clip.wav"]["real_time_patches"]].reshape(-1, D).mean(0), atol=1e-5)
    # an output written before layers were recorded is the last layer: a re-run with the default resumes it
    written = tmp_path / "default" / "extract_index.json"
    record = json.loads(written.read_text())
    del record["settings"]["layers"]
    written.write_text(json.dumps(record))
    capsys.readouterr()
    assert cli_main(base + ["--out", str(tmp_path / "default"), "--granularity", "cls"]) == 0
    assert "1 of 1 file(s) already extracted" in capsys.readouterr().out
    assert cli_main(base + ["--out", str(tmp_path / "bad"), "--layer", "7"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layer 7 does not exist" in err[0]


def test_hear_and_xares_options(tmp_path, monkeypatch):
    checkpoint = str(write_project_checkpoint(tmp_path / "checkpoint.pt", tiny_encoder()))
    audio = torch.rand(2, 2 * RATE) * 2 - 1
    default = hear.load_model(checkpoint, device="cpu")
    every = hear.load_model(checkpoint, layers="all", tokens="mean", device="cpu")
    assert every.scene_embedding_size == every.timestamp_embedding_size == (DEPTH + 1) * D
    scene = hear.get_scene_embeddings(audio, every)
    assert scene.shape == (2, (DEPTH + 1) * D)
    frames, _ = hear.get_timestamp_embeddings(audio, every)
    reference, _ = hear.get_timestamp_embeddings(audio, default)
    torch.testing.assert_close(frames[..., -D:], reference, rtol=0, atol=1e-6)  # layers concatenated, last one last
    clips = sslam.encode(default, audio)
    torch.testing.assert_close(scene[:, -D:], torch.stack([c.tokens("mean") for c in clips]), rtol=0, atol=1e-6)
    monkeypatch.setenv("SSLAM_LAYERS", "0,2")  # what the HEAR tools and X-ARES can pass: the environment
    assert hear.load_model(checkpoint, device="cpu").scene_embedding_size == 2 * D
    encoder = SSLAMEncoder(checkpoint)
    assert encoder.output_dim == 2 * D and encoder(audio).shape == (2, reference.shape[1], 2 * D)
    patches = SSLAMEncoder(checkpoint, layers=-1, tokens="patch")
    out = patches(audio)
    assert patches.output_dim == FREQ_PATCHES * D and out.shape == (2, reference.shape[1], FREQ_PATCHES * D)
    torch.testing.assert_close(out.reshape(2, -1, FREQ_PATCHES, D).mean(2), reference, rtol=0, atol=1e-5)
    with pytest.raises(SslamError, match="X-ARES tokens"):
        SSLAMEncoder(checkpoint, tokens="cls")
