"""The HEAR 2021 API (sslam.embeddings.hear): its contract in-process, and the official validator (`hear-validator`
from hearvalidator, which imports tensorflow) run in its own cached environment, on a project checkpoint and
on a checkpoint in EAT's Hugging Face layout reached through an hf: id and the hub cache."""
import math
import subprocess
from pathlib import Path

import pytest
import torch

import sslam
import sslam.embeddings.hear as hear
from embed_helpers import EAT_REPO, TINY, TRAINED_INPUT, tiny_encoder, write_hub_cache, write_project_checkpoint
from validator_envs import ensure_environment, environment_variables

REPO = Path(sslam.__file__).resolve().parents[1]


def test_hear_api_contract(tmp_path):
    model = hear.load_model(str(write_project_checkpoint(tmp_path / "checkpoint.pt", tiny_encoder())), device="cpu")
    assert isinstance(model, torch.nn.Module) and model.sample_rate == 16000
    assert model.scene_embedding_size == model.timestamp_embedding_size == TINY["embed_dim"]
    audio = torch.rand(3, 2 * 16000) * 2 - 1  # 2 s = 198 frames: two windows of the checkpoint's 192
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, TINY["embed_dim"]) and scene.dtype == torch.float32
    frames, times = hear.get_timestamp_embeddings(audio, model)
    num_frames = 1 + (audio.shape[1] - 400) // 160
    assert frames.shape == (3, math.ceil(num_frames / 16), TINY["embed_dim"]) and frames.dtype == torch.float32
    assert times.shape == frames.shape[:2]
    assert torch.allclose(torch.diff(times), torch.full_like(times[:, 1:], 160.0))
    assert times[0, 0] == pytest.approx(87.5)  # the centre of the first 16-frame patch
    assert model.window == TRAINED_INPUT["target_length"]


@pytest.fixture(scope="module")
def hear_environment():
    env, reason = ensure_environment("hear")
    if env is None:
        pytest.skip(reason)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["project", "eat-huggingface"])
def test_official_hear_validator_passes(tmp_path, hear_environment, layout):
    encoder = tiny_encoder()
    extra = {}
    if layout == "project":
        model = str(write_project_checkpoint(tmp_path / "checkpoint.pt", encoder))
    else:
        write_hub_cache(tmp_path / "hub", encoder)
        model, extra = f"hf:{EAT_REPO}", {"HF_HUB_CACHE": str(tmp_path / "hub")}
    validator = hear_environment / "bin" / "hear-validator"  # hearvalidator's console script
    command = [str(validator), "sslam.embeddings.hear", "--model", model, "--device", "cpu"]
    result = subprocess.run(command, env=environment_variables(REPO, **extra), capture_output=True, text=True,
                            timeout=900, cwd=tmp_path)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.strip().endswith("Looks good!")
    assert f"scene_embedding_size: {TINY['embed_dim']}" in result.stdout
