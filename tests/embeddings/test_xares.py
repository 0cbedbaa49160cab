"""The X-ARES encoder (sslam.embeddings.xares.SSLAMEncoder): its contract in-process, and X-ARES's own
`check_audio_encoder` (xares pulls transformers and more, so it runs in its own cached environment), found
the way `python -m xares.run sslam/embeddings/xares.py ...` finds it, on a project checkpoint and on a checkpoint in
EAT's Hugging Face layout."""
import json
import subprocess
from pathlib import Path

import pytest
import torch

import sslam
import sslam.embeddings.xares
from embed_helpers import EAT_REPO, TINY, tiny_encoder, write_hub_cache, write_project_checkpoint
from sslam.embeddings.api import CHECKPOINT_ENVIRONMENT
from sslam.embeddings.xares import SSLAMEncoder
from sslam.runtime.errors import SslamError
from validator_envs import ensure_environment, environment_variables

REPO = Path(sslam.__file__).resolve().parents[1]


def test_encoder_contract(tmp_path):
    encoder = SSLAMEncoder(write_project_checkpoint(tmp_path / "checkpoint.pt", tiny_encoder()))
    assert (encoder.sampling_rate, encoder.output_dim, encoder.hop_size_in_ms) == (16000, TINY["embed_dim"], 160.0)
    frames = encoder(torch.randn(2, 50000))
    assert frames.shape == (2, 20, TINY["embed_dim"])  # 311 frames -> 20 time patches of 160 ms
    assert encoder(torch.randn(16000)).shape == (1, 7, TINY["embed_dim"])  # 1-D input is one clip
    # X-ARES picks the class as the only module attribute whose name ends in "Encoder"
    assert [name for name in dir(sslam.embeddings.xares) if name.endswith("Encoder")] == ["SSLAMEncoder"]


def test_no_arguments_uses_the_environment_and_never_silently_a_random_model(tmp_path, monkeypatch):
    checkpoint = write_project_checkpoint(tmp_path / "checkpoint.pt", tiny_encoder())
    monkeypatch.setenv(CHECKPOINT_ENVIRONMENT, str(checkpoint))
    assert SSLAMEncoder().output_dim == TINY["embed_dim"]
    monkeypatch.delenv(CHECKPOINT_ENVIRONMENT)
    with pytest.raises(SslamError, match=f"\\${CHECKPOINT_ENVIRONMENT} is unset"):
        SSLAMEncoder()
    monkeypatch.setenv(CHECKPOINT_ENVIRONMENT, "random")  # a random network only when asked for by name
    with pytest.warns(UserWarning, match="randomly initialised ViT-B"):
        default = SSLAMEncoder()
    assert default.output_dim == 768 and default.embedder.encoder.config.depth == 12


@pytest.fixture(scope="module")
def xares_environment():
    env, reason = ensure_environment("xares")
    if env is None:
        pytest.skip(reason)
    return env


CHECK = """
import json, sys
from xares.audio_encoder_checker import check_audio_encoder
from xares.utils import attr_from_py_path
encoder_class = attr_from_py_path("sslam/embeddings/xares.py", endswith="Encoder")  # what python -m xares.run does
print(json.dumps({"class": encoder_class.__name__,
                  "with_checkpoint": check_audio_encoder(encoder_class(sys.argv[1])),
                  "without_arguments": check_audio_encoder(encoder_class())}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["project", "eat-huggingface"])
def test_xares_check_audio_encoder_passes(tmp_path, xares_environment, layout):
    encoder = tiny_encoder()
    extra = {}
    if layout == "project":
        checkpoint = str(write_project_checkpoint(tmp_path / "checkpoint.pt", encoder))
    else:
        write_hub_cache(tmp_path / "hub", encoder)
        checkpoint, extra = f"hf:{EAT_REPO}", {"HF_HUB_CACHE": str(tmp_path / "hub")}
    extra[CHECKPOINT_ENVIRONMENT] = checkpoint  # X-ARES builds encoders without arguments
    result = subprocess.run([str(xares_environment / "bin" / "python"), "-c", CHECK, checkpoint],
                            env=environment_variables(REPO, **extra), capture_output=True, text=True, timeout=900,
                            cwd=REPO)
    print(result.stdout, result.stderr[-2000:])
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"class": "SSLAMEncoder", "with_checkpoint": True, "without_arguments": True}
