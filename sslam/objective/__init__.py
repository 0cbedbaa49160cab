"""The SSLAM pre-training objective: masking, mixing, teacher targets, losses, source retention.

Knows nothing of optimisers, files or MLflow; the training loop drives `PretrainingObjective`.
"""
from sslam.objective.config import VARIANT_PRESETS, ObjectiveConfig, variant_config
from sslam.objective.losses import LossTerm, d2v_loss, global_loss, local_loss, term_weights, total_loss
from sslam.objective.masking import clone_masks, inverse_block_mask, keep_index
from sslam.objective.mixing import MixRegions, draw_regions, mix_batch
from sslam.objective.pretraining import ObjectiveOutput, PretrainingObjective
from sslam.objective.source_retention import source_retention_terms, srl_target
from sslam.objective.targets import global_target, make_targets, teacher_targets

__all__ = [
    "VARIANT_PRESETS",
    "LossTerm",
    "MixRegions",
    "ObjectiveConfig",
    "ObjectiveOutput",
    "PretrainingObjective",
    "clone_masks",
    "d2v_loss",
    "draw_regions",
    "global_loss",
    "global_target",
    "inverse_block_mask",
    "keep_index",
    "local_loss",
    "make_targets",
    "mix_batch",
    "source_retention_terms",
    "srl_target",
    "teacher_targets",
    "term_weights",
    "total_loss",
    "variant_config",
]
