"""Constants and helpers shared by the evaluation tests (a uniquely named module, so that it
never collides with another test folder's helpers on sys.path)."""
import dataclasses
import json

import torch

TARGET_LENGTH = 112          # 1 s of 10 ms frames (98) padded to a multiple of the 16-frame patch
TINY_ENCODER = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "max_time_patches": 16}
POLY = {"dataset": "poly", "eval_split": "test", "num_workers": 0,
        "linear": {"steps": 3, "batch_size": 8}, "finetune": {"steps": 4, "batch_size": 8}}
REQUIRED = {"benchmark", "regime", "variant", "seed", "checkpoint", "metric", "value", "per_class",
            "classes_without_positives", "selection", "steps", "epochs", "wall_time_s", "code_hash"}


def save_checkpoint(path, seed=0):
    """A project-format checkpoint (docs/architecture.md) of a tiny encoder; returns (student, teacher)."""
    from sslam.model.encoder import AudioEncoder, EncoderConfig

    torch.manual_seed(seed)
    config = EncoderConfig(**TINY_ENCODER)
    student, teacher = AudioEncoder(config), AudioEncoder(config)
    torch.save({"format": "sslam", "version": 1, "model": {"encoder": dataclasses.asdict(config), "decoder": None},
                "student": student.state_dict(), "teacher": teacher.state_dict(), "decoder": None,
                "stage": 2, "variant": "SSLAM", "step": 7}, path)
    return student, teacher


def read_metrics(out):
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED <= set(metrics), f"missing keys {REQUIRED - set(metrics)}"
    return metrics
