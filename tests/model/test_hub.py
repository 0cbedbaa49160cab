"""Checkpoint routes: hf: ids through huggingface_hub's cache (offline: the hub is never reached in tests),
model folders, hub cache folders, an unreachable hub (one line within seconds), and the input settings a
checkpoint records."""
import http.server
import socket
import threading
import time

import pytest

from embed_helpers import (EAT_REPO, EAT_REVISION, TINY, TRAINED_INPUT, same_outputs, tiny_encoder,
                           write_hub_cache, write_project_checkpoint)
from sslam.cli import main as cli_main
from sslam.model import EncoderConfig
from sslam.model.checkpoints.types import CheckpointError
from sslam.model.checkpoints.read import load_encoder, read_checkpoint
from sslam.model.checkpoints.export import save_pretrained
from sslam.model.checkpoints.settings import InputSettings, default_input, input_settings
from sslam.model.checkpoints.routes import hub_unreachable, resolve_checkpoint

hub_constants = pytest.importorskip("huggingface_hub.constants")


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty hub cache in offline mode (set in the environment and in the already-imported constants)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hf_id_resolves_from_the_hub_cache_offline(offline_cache):
    encoder = tiny_encoder()
    write_hub_cache(offline_cache, encoder)
    for spec in (f"hf:{EAT_REPO}", f"hf:{EAT_REPO}@{EAT_REVISION}", f"hf:{EAT_REPO}:model.safetensors"):
        path = resolve_checkpoint(spec)
        assert path.name == "model.safetensors" and EAT_REVISION in str(path)
        loaded = read_checkpoint(spec)
        assert loaded.meta["format"] == "hf-safetensors"
        assert loaded.encoder_config == EncoderConfig(**TINY)  # num_heads from EAT's config.json
        assert same_outputs(load_encoder(spec), encoder)
    # no norm statistics in EAT's config.json: the official ones, the window cut to this small encoder's table
    settings = input_settings(read_checkpoint(f"hf:{EAT_REPO}"))
    assert (settings.norm_mean, settings.norm_std) == (InputSettings.norm_mean, InputSettings.norm_std)
    assert settings == default_input(EncoderConfig(**TINY))
    assert settings.target_length == TINY["max_time_patches"] * 16 < InputSettings.target_length


def test_hub_cache_folder_and_model_folder_routes(tmp_path, offline_cache):
    encoder = tiny_encoder()
    entry = write_hub_cache(tmp_path / "elsewhere", encoder)  # a cache entry outside HF_HUB_CACHE
    assert same_outputs(load_encoder(entry), encoder)
    assert same_outputs(load_encoder(entry / "snapshots" / EAT_REVISION), encoder)  # a snapshot = a model folder
    (entry / "refs" / "main").unlink()  # no refs/main: the single snapshot is used
    assert same_outputs(load_encoder(entry), encoder)
    folder = save_pretrained(encoder, tmp_path / "exported", InputSettings(-1.0, 2.0, 128, source="test"))
    assert same_outputs(load_encoder(folder), encoder)
    settings = input_settings(read_checkpoint(folder))
    assert (settings.norm_mean, settings.norm_std, settings.target_length) == (-1.0, 2.0, 128)


def test_route_errors_are_one_line(tmp_path, offline_cache, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="not a model folder"):
        resolve_checkpoint(empty)
    with pytest.raises(CheckpointError, match="not a Hugging Face id"):
        resolve_checkpoint("hf:no-slash")
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache .* offline mode"):
        resolve_checkpoint("hf:someone/absent")
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"")
    assert cli_main(["extract", "hf:someone/absent", str(clip), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslam extract: error: hf:someone/absent:")


def test_project_checkpoint_records_its_input_settings(tmp_path):
    path = write_project_checkpoint(tmp_path / "checkpoint.pt", tiny_encoder())
    loaded = read_checkpoint(path)
    assert loaded.meta["input"] == TRAINED_INPUT
    settings = input_settings(loaded)
    assert settings.as_dict() == TRAINED_INPUT and settings.source == "the checkpoint"
    older = write_project_checkpoint(tmp_path / "older.pt", tiny_encoder(), trained_input=None)
    assert input_settings(read_checkpoint(older)) == default_input(EncoderConfig(**TINY))
    with pytest.raises(CheckpointError, match="norm_std must be > 0"):
        InputSettings(norm_std=0.0)



@pytest.fixture
def silent_endpoint():
    """A hub that accepts connections (the kernel completes them) and never answers a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def answering_endpoint():
    """A local HTTP server that answers every request with 404: a hub that is there."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_unreachable_hub_is_one_line_within_seconds(tmp_path, monkeypatch, silent_endpoint, capsys):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"")
    for endpoint in (silent_endpoint, "http://sslam-no-such-host.invalid"):  # no answer; no such name
        monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
        capsys.readouterr()
        started = time.monotonic()
        code = cli_main(["extract", "hf:someone/absent", str(clip), "--out", str(tmp_path / "o")])
        elapsed = time.monotonic() - started
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and elapsed < 5, elapsed
        assert len(err) == 1 and "cannot be reached" in err[0], err  # no retry lines
        assert "HF_HUB_OFFLINE=1" in err[0] and str(cache) in err[0]
    # what the cache holds is still read, and the warning says why the hub was not asked
    encoder = tiny_encoder()
    write_hub_cache(cache, encoder)
    with pytest.warns(UserWarning, match="cannot be reached"):
        assert same_outputs(load_encoder(f"hf:{EAT_REPO}"), encoder)


def test_a_hub_that_answers_is_reachable_whatever_the_status(answering_endpoint, silent_endpoint):
    assert hub_unreachable(answering_endpoint) is None
    started = time.monotonic()
    why = hub_unreachable(silent_endpoint, timeout=1.0)
    assert why is not None and time.monotonic() - started < 3, why
