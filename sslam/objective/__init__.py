"""The SSLAM pre-training objective: masking, mixing, teacher targets, losses, source retention, MixIT.

Knows nothing of optimisers, files or MLflow; the training loop drives `PretrainingObjective`.
"""
from sslam import lazy_exports

_EXPORTS = {
    "VARIANT_PRESETS": "sslam.objective.config",
    "ObjectiveConfig": "sslam.objective.config",
    "variant_config": "sslam.objective.config",
    "LossTerm": "sslam.objective.losses",
    "d2v_loss": "sslam.objective.losses",
    "global_loss": "sslam.objective.losses",
    "local_loss": "sslam.objective.losses",
    "term_weights": "sslam.objective.losses",
    "total_loss": "sslam.objective.losses",
    "clone_masks": "sslam.objective.masking",
    "inverse_block_mask": "sslam.objective.masking",
    "keep_index": "sslam.objective.masking",
    "MixedHalf": "sslam.objective.mixing",
    "MixRegions": "sslam.objective.mixing",
    "draw_regions": "sslam.objective.mixing",
    "mix_batch": "sslam.objective.mixing",
    "MixItHead": "sslam.objective.mixit",
    "MixItSettings": "sslam.objective.mixit",
    "mixit_terms": "sslam.objective.mixit",
    "ObjectiveOutput": "sslam.objective.pretraining",
    "PretrainingObjective": "sslam.objective.pretraining",
    "SrlSettings": "sslam.objective.source_retention",
    "source_retention_terms": "sslam.objective.source_retention",
    "srl_target": "sslam.objective.source_retention",
    "global_target": "sslam.objective.targets",
    "make_targets": "sslam.objective.targets",
    "teacher_targets": "sslam.objective.targets",
}

__getattr__ = lazy_exports(__name__, _EXPORTS)  # imported on first use (no torch at parse time)

__all__ = sorted(_EXPORTS)
