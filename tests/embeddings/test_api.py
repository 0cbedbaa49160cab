"""sslam.embeddings: windows over long audio (a 30-s clip depends on its last 10 s), timestamps, the single
window equal to the official extractor, truncation, waveform and file inputs."""
import math

import numpy as np
import pytest
import soundfile
import torch

from embed_helpers import TINY, TRAINED_INPUT, tiny_encoder, write_project_checkpoint
from sslam.audio.front_end import fit_length, load_raw_fbank, normalise
from sslam.embeddings.api import Embedder, encode, load_encoder
from sslam.runtime.errors import SslamError
from sslam.model.checkpoints.settings import InputSettings

RATE = 16000
WINDOW = 192  # frames (1.92 s): a 30-s clip spans 16 windows


@pytest.fixture
def model():
    return Embedder(tiny_encoder(), InputSettings(target_length=WINDOW))


def clip_pair(seconds=30.0, changed_from=20.0, seed=0):
    """A noisy clip with a few tones, and a copy whose last (seconds - changed_from) seconds differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    audio = 0.05 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 440 * t) * (t % 3 < 1.5)
    changed = audio.copy()
    tail = slice(int(changed_from * RATE), None)
    changed[tail] = 0.05 * rng.standard_normal(changed[tail].size) + 0.3 * np.sin(2 * np.pi * 2500 * t[tail])
    return torch.tensor(np.stack([audio, changed]), dtype=torch.float32)


def test_a_30_second_clip_depends_on_its_last_10_seconds(model):
    audio = clip_pair()
    scene = model.scene_embeddings(audio)
    frames, times = model.timestamp_embeddings(audio)
    # every window runs through the encoder: the change moves the scene vector far beyond numerical noise
    noise = (model.scene_embeddings(audio[:1]) - scene[:1]).abs().max()
    assert (scene[0] - scene[1]).abs().max() > 100 * max(noise.item(), 1e-7)
    late, early = times[0] > 20_000 + 160, times[0] < 20_000 - 2 * WINDOW * 10  # patches clear of the edge
    assert late.sum() > 50 and early.sum() > 50
    assert (frames[0, late] - frames[1, late]).abs().amax(dim=1).min() > 1e-3  # every late patch changed
    assert torch.allclose(frames[0, early], frames[1, early], atol=1e-5)  # windows before the change did not
    # the same clips truncated to one window cannot tell the two apart, and say so
    truncating = Embedder(model.encoder, model.settings, long_audio="truncate")
    with pytest.warns(UserWarning, match="2 clip\\(s\\) longer than the window"):
        short = truncating.scene_embeddings(audio)
    assert torch.allclose(short[0], short[1], atol=1e-6)


def test_timestamps_cover_the_whole_clip_at_a_regular_step(model):
    audio = clip_pair(seconds=7.3)[:1]
    num_frames = 1 + (audio.shape[1] - 400) // 160
    for hop in (WINDOW, WINDOW // 2, 16):  # no overlap, half overlap, a window every patch
        embedder = Embedder(model.encoder, model.settings, hop=hop)
        clip = embedder.embed(audio)[0]
        assert clip.num_windows == 1 + math.ceil((num_frames - WINDOW) / hop)
        assert clip.timestamps.shape == (math.ceil(num_frames / 16), TINY["embed_dim"])
        assert torch.allclose(clip.times_ms, 87.5 + 160.0 * torch.arange(clip.timestamps.shape[0]))
    # with overlap, a patch comes from the window it sits most centrally in: with a window (12 patches)
    # starting at every patch, patch 11 of the clip comes from the window starting at patch 5 (where it is
    # patch 6, the centre; the tie with the window at patch 6 goes to the earlier one)
    clip = Embedder(model.encoder, model.settings, hop=16).embed(audio)[0]
    fbank = model.fbank(audio[0])
    start = 5 * 16
    window = normalise(fit_length(fbank[start: start + WINDOW], WINDOW), model.settings.norm_mean,
                       model.settings.norm_std)
    with torch.no_grad():
        tokens = model.encoder(window[None])[0, 1:].reshape(WINDOW // 16, 4, -1)
    centre = WINDOW // 16 // 2
    assert torch.allclose(clip.patches[5 + centre], tokens[centre], atol=1e-5)


def test_a_clip_that_fits_one_window_gives_the_official_output(tmp_path):
    checkpoint = write_project_checkpoint(tmp_path / "checkpoint.pt", tiny_encoder())
    model = load_encoder(checkpoint, device="cpu")
    assert model.window == TRAINED_INPUT["target_length"]
    path = tmp_path / "clip.wav"
    soundfile.write(path, 0.1 * np.random.default_rng(1).standard_normal(RATE).astype(np.float32), RATE)
    clip = encode(model, path)[0]
    raw = load_raw_fbank(path, model.front_end)
    # official recipe: pad the raw log-mel to the target length, normalise with the trained statistics
    official = normalise(fit_length(raw, WINDOW), TRAINED_INPUT["norm_mean"], TRAINED_INPUT["norm_std"])
    with torch.no_grad():
        expected = model.encoder(official[None])[0].numpy()
    np.testing.assert_allclose(clip.granularity("all"), expected, atol=1e-5)
    np.testing.assert_allclose(clip.granularity("utterance"), expected[0], atol=1e-5)
    assert clip.real_time_patches == math.ceil(raw.shape[0] / 16) and not clip.truncated
    # the same audio as a waveform at another rate is resampled to 16 kHz first
    import torchaudio

    resampled = torchaudio.functional.resample(torch.from_numpy(soundfile.read(path, dtype="float32")[0]), RATE, 22050)
    again = encode(model, resampled[None], sample_rate=22050)[0]
    assert torch.nn.functional.cosine_similarity(again.scene, clip.scene, dim=0) > 0.99


def test_bfloat16_autocast_and_settings_validation(model):
    audio = clip_pair(seconds=3.0)[:1]
    reduced = Embedder(model.encoder, model.settings, dtype="bfloat16").scene_embeddings(audio)
    assert reduced.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(reduced, model.scene_embeddings(audio)) > 0.99
    with pytest.raises(SslamError, match="multiple of the patch size"):
        Embedder(model.encoder, model.settings, window=100)
    with pytest.raises(SslamError, match="must not exceed the window"):
        Embedder(model.encoder, model.settings, hop=2 * WINDOW)
    with pytest.raises(SslamError, match="long_audio"):
        Embedder(model.encoder, model.settings, long_audio="crop")
    with pytest.raises(SslamError, match="dtype"):
        Embedder(model.encoder, model.settings, dtype="float16")
    with pytest.raises(SslamError, match="clips of one length"):
        model.timestamp_embeddings([torch.randn(RATE), torch.randn(2 * RATE)])
    # silent or very short benchmark clips are embedded, not refused (files are checked by sslam.audio.front_end)
    assert model.scene_embeddings(torch.zeros(2, 100)).shape == (2, TINY["embed_dim"])


def test_a_forgotten_checkpoint_is_an_error_on_every_route(tmp_path, monkeypatch, capsys):
    import sslam.embeddings.hear as hear
    from sslam.cli import main as cli_main
    from sslam.embeddings.api import CHECKPOINT_ENVIRONMENT
    from sslam.embeddings.xares import SSLAMEncoder

    monkeypatch.delenv(CHECKPOINT_ENVIRONMENT, raising=False)
    routes = {"load_encoder()": lambda: load_encoder(), "load_encoder('')": lambda: load_encoder(""),
              "hear.load_model('')": lambda: hear.load_model(""), "SSLAMEncoder()": lambda: SSLAMEncoder()}
    for name, route in routes.items():
        with pytest.raises(SslamError, match=f"\\${CHECKPOINT_ENVIRONMENT} is unset"):
            route()
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, 0.1 * np.random.default_rng(0).standard_normal(RATE).astype(np.float32), RATE)
    capsys.readouterr()
    assert cli_main(["extract", "", str(clip), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is unset" in err[0] and not (tmp_path / "out").exists()
    # "random", and only "random", is a random network, with a warning
    with pytest.warns(UserWarning, match="randomly initialised"):
        assert hear.load_model("random", device="cpu").encoder.config.depth == 12
