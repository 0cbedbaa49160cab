"""Configuration of the SSLAM pre-training objective, and the paper's four variants as presets.

Defaults are the official Stage-2 recipe (spec algorithm.md §3, §5-§7). Where the paper describes a
different choice the paper's version is a named option; docs/objective.md maps every knob to the paper
table it reproduces.

Which halves of the Stage-2 batch the student sees follows from the loss switches: the unmixed half is
in the student batch when an unmixed term is on, the mixed half when a mixed or SRL term is on. So the
variants differ only in configuration, never in code.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

from sslam.runtime.configuration import check_ranges, from_dict
from sslam.runtime.errors import ConfigError
from sslam.fingerprints import Registry

# "all" = average every teacher layer (12 for ViT-B); an int k = the last k layers.
LayerCount = int | Literal["all"]
MixMode = Literal["partial", "full", "none"]
MixOp = Literal["logmel_max", "logmel_mean", "waveform_mean"]
LossWeighting = Literal["official", "paper"]
SrlAggregation = Literal["mean", "max"]
Stage1Input = Literal["unmixed", "mixed"]
MixItLevel = Literal["patch", "cls", "both"]

# The official code's unmixed region is 240 of 1024 frames (two of them; spec §7).
OFFICIAL_REGION_FRACTION = 240 / 1024

UNMIXED_TERMS = ("local_unmixed", "global_unmixed")
MIXED_TERMS = ("local_mixed", "global_mixed")
SRL_TERMS = ("srl_local", "srl_global")
# One switch for the MixIT variant (App. C); its terms are named by level: mixit_patch, mixit_cls.
MIXIT_SWITCH = "mixit"
LOSS_SWITCHES = UNMIXED_TERMS + MIXED_TERMS + SRL_TERMS + (MIXIT_SWITCH,)
MIXED_HALF_SWITCHES = MIXED_TERMS + SRL_TERMS + (MIXIT_SWITCH,)
# The MixIT minimum runs over 2^K assignments (the paper's own objection to large K, App. C).
MIXIT_VECTORS_RANGE = (2, 8)

# Keys that left this section: where a YAML must set them now.
MOVED_KEYS = {
    "ema_decay_start": "pretrain.stage1.ema_start / pretrain.stage2.ema_start",
    "ema_decay_end": "pretrain.stage1.ema_end / pretrain.stage2.ema_end",
    "ema_anneal_steps": "pretrain.stage1.ema_anneal_steps / pretrain.stage2.ema_anneal_steps",
}


@dataclass
class ObjectiveConfig:
    # --- inverse block multi-masking (spec §3) ---
    mask_prob: float = 0.8
    mask_prob_adjust: float = 0.07
    block_size: int = 5
    clones_stage1: int = 16
    # Stage 2 runs on the concatenated 2B batch, so 8 clones keep B·C equal to Stage 1 (paper Alg. 1).
    clones_stage2: int = 8

    # --- teacher targets (spec §5) ---
    local_target_layers: LayerCount = "all"
    global_target_layers_stage1: LayerCount = "all"
    # Official Stage 2: the last layer only, for BOTH halves (spec §12). The paper implies the
    # 12-layer average for the unmixed half: set global_target_unmixed_layers: all.
    global_target_layers_stage2: LayerCount = 1
    global_target_unmixed_layers: LayerCount | None = None  # None = same as global_target_layers_stage2

    # --- mixing (spec §7, paper Tables 4 and 10) ---
    mix_mode: MixMode = "partial"
    mix_op: MixOp = "logmel_max"
    region_fraction: float = OFFICIAL_REGION_FRACTION
    # Probability that an update mixes at all ("mixed audio 75% of updates", Table 4); otherwise the
    # mixed half is the unmixed audio (its SRL target then reduces to the clip's own features).
    mix_probability: float = 1.0
    # Normalisation stats of the cached fbank, needed only by mix_op waveform_mean (which must undo
    # the normalisation); PretrainingObjective(norm_stats=...) overrides them.
    norm_mean: float | None = None
    norm_std: float | None = None
    # Stage 1 trains on one batch: the audio itself (EAT) or its mixed version (Table 4 Stage-1 rows).
    stage1_input: Stage1Input = "unmixed"

    # --- Stage-2 loss switches (paper §3.3, Tables 2 and 5) ---
    local_unmixed: bool = True
    local_mixed: bool = True
    global_unmixed: bool = True
    global_mixed: bool = True
    srl_local: bool = True
    srl_global: bool = False  # computed but unused in the official code; Table 5's last row
    srl_aggregation: SrlAggregation = "mean"  # Table 11
    loss_weighting: LossWeighting = "official"

    # --- MixIT concept separation (paper App. C, Eq. 6; never released, so these are our choices) ---
    # An MLP maps the student's mixed-half outputs to K vectors whose best 2-way split must sum to the
    # teacher's views of the two unmixed sources. Off in every official preset; on in the MixIT preset.
    mixit: bool = False
    # K = 4: Wisdom et al.'s MixIT separates a mixture of two mixtures into 4 outputs, which lets each
    # clip keep more than one concept while the 2^4 = 16 assignments stay cheap.
    mixit_vectors: int = 4
    # patch: on the masked tokens of the mixed rows, like the SRL that MixIT stands in for (local SRL on,
    # global off officially); cls: on the CLS output; both: the two terms, each with its own minimum.
    mixit_level: MixItLevel = "patch"

    def __post_init__(self) -> None:
        check_ranges(self, mask_prob="(0, 1)", mask_prob_adjust="[0, 1)", block_size=">= 1", clones_stage1=">= 1",
                     clones_stage2=">= 1", region_fraction="(0, 0.5)",
                     mix_probability="[0, 1]", norm_mean="(-inf, inf)", norm_std="> 0")
        layer_counts = ("local_target_layers", "global_target_layers_stage1", "global_target_layers_stage2",
                        "global_target_unmixed_layers")
        check_ranges(self, **{name: ">= 1" for name in layer_counts if getattr(self, name) != "all"})
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ConfigError("objective.norm_mean and objective.norm_std must be given together")
        if self.norm_std is not None and self.norm_std <= 0:
            raise ConfigError(f"objective.norm_std must be positive, got {self.norm_std}")
        low, high = MIXIT_VECTORS_RANGE
        if not low <= self.mixit_vectors <= high:
            raise ConfigError(f"objective.mixit_vectors must be in [{low}, {high}] (the MixIT minimum runs over "
                              f"2^K assignments), got {self.mixit_vectors}")
        if self.mixit_level not in typing.get_args(MixItLevel):
            raise ConfigError(f"objective.mixit_level must be one of {list(typing.get_args(MixItLevel))}, "
                              f"got {self.mixit_level!r}")
        if not any(getattr(self, name) for name in LOSS_SWITCHES):
            raise ConfigError(f"objective: every loss term is switched off ({', '.join(LOSS_SWITCHES)})")
        mixing_terms = [name for name in MIXED_HALF_SWITCHES if getattr(self, name)]
        if mixing_terms and self.mix_mode == "none":
            raise ConfigError(f"objective.mix_mode is 'none' but mixed-audio terms are on: {mixing_terms}")
        if self.stage1_input == "mixed" and self.mix_mode == "none":
            raise ConfigError("objective.stage1_input is 'mixed' but objective.mix_mode is 'none'")

    @property
    def student_sees_unmixed(self) -> bool:
        return self.local_unmixed or self.global_unmixed

    @property
    def student_sees_mixed(self) -> bool:
        return any(getattr(self, name) for name in MIXED_HALF_SWITCHES)


def reject_moved_keys(mapping: dict[str, Any], where: str) -> None:
    """One ConfigError for every key of `mapping` that moved out of the objective section."""
    moved = [key for key in mapping if key in MOVED_KEYS]
    if moved:
        raise ConfigError("; ".join(
            f"{where}.{key} has moved: the teacher's EMA schedule belongs to the training stage, set "
            f"{MOVED_KEYS[key]}" for key in moved))


def resolve_layer_count(value: LayerCount, depth: int, name: str) -> int:
    """"all" -> depth; an int must lie in 1..depth (a tiny encoder cannot average 12 layers)."""
    if value == "all":
        return depth
    if not 1 <= value <= depth:
        raise ConfigError(f"objective.{name} = {value} but the encoder has {depth} layers (use 1..{depth} or 'all')")
    return value


def floor_count(value: float) -> int:
    """⌊value⌋ robust to float noise: 40·(1−0.8) is 7.999… in binary but means 8."""
    return math.floor(value + 1e-9)


# The four models of paper §4.3 / Tables 2-3, as overrides of the official (SSLAM) recipe.
# Single-batch variants (MB-UA, MB-PMA) use 16 clones so that B·C matches the 2B·8 of the others.
VARIANT_PRESETS = Registry("VARIANT_PRESETS", {
    # Stage-2 continuation on unmixed audio only with the Stage-1 (EAT) losses, including the
    # 12-layer global target: the paper introduces the last-layer global target with the mixtures.
    "MB-UA": dict(mix_mode="none", local_mixed=False, global_mixed=False, srl_local=False,
                  srl_global=False, clones_stage2=16, global_target_unmixed_layers="all"),
    # The WHOLE batch partially mixed (paper App. D: MB-UA-PMA splits MB-PMA's batch into halves);
    # ordinary global/local losses against the teacher run on the same mixed input; no SRL.
    "MB-PMA": dict(local_unmixed=False, global_unmixed=False, srl_local=False, srl_global=False,
                   clones_stage2=16),
    # Half unmixed, half mixed, the four ordinary losses, no SRL.
    "MB-UA-PMA": dict(srl_local=False, srl_global=False),
    # Everything, as the released code.
    "SSLAM": {},
    # App. C's concept separation in place of the SRL (the paper compares it with SSLAM: 39.9 vs 40.9
    # mAP on AS-20K): both halves and the four ordinary losses, the MixIT term instead of the SRL.
    "MixIT": dict(srl_local=False, srl_global=False, mixit=True),
})


def variant_config(name: str | None, base: ObjectiveConfig | dict[str, Any] | None = None,
                   overrides: dict[str, Any] | None = None) -> ObjectiveConfig:
    """Base config (dataclass or YAML mapping) + the variant's preset + the study's YAML overrides.

    The preset is applied over the base and the YAML overrides last, so a study can, e.g., run
    SSLAM with `srl_aggregation: max` (Table 11) without a new preset. A new variant (an ablation)
    names the preset it starts from with the key `base`, e.g. `variants: {SSLAM-srl-max: {base: SSLAM,
    srl_aggregation: max}}`.
    """
    overrides = dict(overrides or {})
    preset = overrides.pop("base", None) or name
    where = f"variants.{name}" if name is not None else "objective"
    if preset is not None and preset not in VARIANT_PRESETS:
        if preset == name:
            raise ConfigError(f"unknown variant {name!r}; known variants: {', '.join(VARIANT_PRESETS)} "
                              f"(a new variant is defined under `variants:` with `base: <one of those>`)")
        raise ConfigError(f"{where}.base: unknown preset {preset!r}; known: {', '.join(VARIANT_PRESETS)}")
    if not isinstance(base, ObjectiveConfig):
        reject_moved_keys(dict(base or {}), "objective")
    reject_moved_keys(overrides, where)
    # Merge plain mappings first and validate once, so a base that is only valid together with the
    # preset (e.g. a YAML base with mix_mode none under the MB-UA preset) is not rejected early.
    merged = dataclasses.asdict(base) if isinstance(base, ObjectiveConfig) else dict(base or {})
    if preset is not None:
        merged.update(VARIANT_PRESETS[preset])
    merged.update(overrides)
    return from_dict(ObjectiveConfig, merged, where=where)


# The key of a `stage1_variants.<name>` entry that lists its Stage-2 descendants (not an objective setting).
STAGE2_DESCENDANTS_KEY = "stage2"


def stage1_variant_config(name: str, base: dict[str, Any] | None, overrides: dict[str, Any] | None) -> ObjectiveConfig:
    """A Stage-1 variant (paper Table 4: Stage 1 on mixed audio, mixed in 75 % of the updates, partially
    mixed): `objective` + the variant's overrides, e.g. {stage1_input: mixed, mix_mode: full}. No preset:
    the Stage-2 presets describe Stage-2 batches."""
    where = f"stage1_variants.{name}"
    if overrides is None:
        raise ConfigError(f"{where}: not defined (define it under `stage1_variants:`)")
    overrides = {key: value for key, value in overrides.items() if key != STAGE2_DESCENDANTS_KEY}
    reject_moved_keys(dict(base or {}), "objective")
    reject_moved_keys(overrides, where)
    return from_dict(ObjectiveConfig, {**dict(base or {}), **overrides}, where=where)
