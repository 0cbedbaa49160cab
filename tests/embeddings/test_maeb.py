"""MAEB / mteb (sslam.embeddings.maeb): the encoder and ModelMeta against mteb's own interface, in mteb's cached
environment of its own (mteb pulls datasets, transformers and sentence-transformers): `ModelMeta.load_model`,
mteb's `EncoderProtocol`, `mteb.evaluate` on mteb's shipped mock audio tasks, and a clip's vector alone and
inside a batch of longer clips (batch padding must not change an embedding)."""
import json
import subprocess
from pathlib import Path

import pytest

import sslam
from embed_helpers import TINY, tiny_encoder, write_project_checkpoint
from validator_envs import ensure_environment, environment_variables

REPO = Path(sslam.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mteb_environment():
    env, reason = ensure_environment("mteb")
    if env is None:
        pytest.skip(reason)
    return env


RUN = r"""
import json, sys
import datasets, numpy as np, torch
import mteb
from mteb.mocks.mock_tasks import (MockAudioClassification, MockAudioClusteringTask,
                                   MockAudioMultilabelClassificationTask, MockAudioPairClassification)
from mteb.models.models_protocols import EncoderProtocol
from mteb._create_dataloaders import create_dataloader
from sslam.embeddings.maeb import SSLAMMtebEncoder, sslam_model_meta

checkpoint = sys.argv[1]
meta = sslam_model_meta(checkpoint, name="sslam/tiny-test", layers="all", tokens="mean")
model = meta.load_model(device="cpu")
out = {"protocol": isinstance(model, EncoderProtocol), "class": type(model).__name__,
       "meta": {"name": meta.name, "modalities": meta.modalities, "training_datasets": sorted(meta.training_datasets),
                "embed_dim": meta.embed_dim, "revision": meta.revision, "n_parameters": meta.n_parameters,
                "real_parameters": model.model.encoder.num_parameters()}}

# mteb's mock audio tasks cast their arrays to datasets.Audio, whose encoder and decoder (torchcodec) need
# FFmpeg's shared libraries; the arrays are given to mteb as they are instead (what the cast decodes back to).
original = datasets.DatasetDict.cast_column
def keep_arrays(self, column, feature, *args, **kwargs):
    if isinstance(feature, datasets.Audio):
        return self
    return original(self, column, feature, *args, **kwargs)
datasets.DatasetDict.cast_column = keep_arrays

tasks = [MockAudioClassification(), MockAudioMultilabelClassificationTask(), MockAudioClusteringTask(),
         MockAudioPairClassification()]
result = mteb.evaluate(model, tasks, cache=None, show_progress_bar=False)
out["scores"] = {task.task_name: task.get_score() for task in result.task_results}

# batch padding: a 0.7-s clip alone, and in a batch with a 3-s and a 12-s clip (the collator resamples, never pads)
rng = np.random.default_rng(0)
short = rng.uniform(-1, 1, int(0.7 * 16000)).astype(np.float32)
def rows(clips):
    return datasets.Dataset.from_dict({"audio": [{"array": c, "sampling_rate": 16000} for c in clips]})
task = MockAudioClassification()
alone = model.encode(create_dataloader(rows([short]), task_metadata=task.metadata, batch_size=4), task_metadata=task.metadata,
                     hf_split="test", hf_subset="default")
longer = [rng.uniform(-1, 1, 3 * 16000).astype(np.float32), short, rng.uniform(-1, 1, 12 * 16000).astype(np.float32)]
batched = model.encode(create_dataloader(rows(longer), task_metadata=task.metadata, batch_size=3), task_metadata=task.metadata,
                       hf_split="test", hf_subset="default")
out["shapes"] = [list(alone.shape), list(batched.shape)]
out["padding_difference"] = float(np.abs(alone[0] - batched[1]).max())
out["neighbours_differ"] = float(np.abs(batched[0] - batched[1]).max())
# the 8-kHz mock clip is resampled by mteb's collator to what SSLAM takes
print(json.dumps(out))
"""


@pytest.mark.slow
def test_sslam_in_mteb_offline(tmp_path, mteb_environment):
    checkpoint = write_project_checkpoint(tmp_path / "checkpoint.pt", tiny_encoder())
    result = subprocess.run([str(mteb_environment / "bin" / "python"), "-c", RUN, str(checkpoint)],
                            env=environment_variables(REPO, HF_DATASETS_OFFLINE="1", MTEB_CACHE=str(tmp_path / "c")),
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    dim = (TINY["depth"] + 1) * TINY["embed_dim"]
    assert outcome["protocol"] and outcome["class"] == "SSLAMMtebEncoder"
    assert outcome["meta"]["modalities"] == ["audio"] and outcome["meta"]["training_datasets"] == ["AudioSet"]
    assert outcome["meta"]["embed_dim"] == dim and outcome["meta"]["n_parameters"] == outcome["meta"]["real_parameters"]
    # every mock task ran to a finite main score
    assert len(outcome["scores"]) == 4 and all(0.0 <= s <= 1.0 for s in outcome["scores"].values()), outcome
    assert outcome["shapes"] == [[1, dim], [3, dim]]
    assert outcome["padding_difference"] <= 1e-5 < outcome["neighbours_differ"], outcome
