"""ObjectiveConfig defaults, validation and the four variant presets (paper §4.3, Tables 2-3)."""
import pytest

from sslam.runtime.configuration import from_dict
from sslam.runtime.errors import ConfigError
from sslam.objective.config import ObjectiveConfig, resolve_layer_count, variant_config


def test_defaults_are_the_official_stage2_recipe():
    cfg = ObjectiveConfig()
    assert (cfg.mask_prob, cfg.mask_prob_adjust, cfg.block_size) == (0.8, 0.07, 5)
    assert (cfg.clones_stage1, cfg.clones_stage2) == (16, 8)
    assert cfg.global_target_layers_stage2 == 1 and cfg.global_target_unmixed_layers is None
    assert cfg.region_fraction == 240 / 1024 and cfg.mix_op == "logmel_max" and cfg.mix_mode == "partial"
    assert cfg.srl_local and not cfg.srl_global and cfg.loss_weighting == "official"


@pytest.mark.parametrize("variant,unmixed,mixed,srl", [
    ("MB-UA", True, False, False),
    ("MB-PMA", False, True, False),
    ("MB-UA-PMA", True, True, False),
    ("SSLAM", True, True, True),
])
def test_presets_switch_the_paper_table_2_columns(variant, unmixed, mixed, srl):
    cfg = variant_config(variant)
    assert cfg.student_sees_unmixed == unmixed and cfg.local_unmixed == unmixed and cfg.global_unmixed == unmixed
    assert cfg.student_sees_mixed == (mixed or srl) and cfg.local_mixed == mixed and cfg.global_mixed == mixed
    assert cfg.srl_local == srl and not cfg.srl_global
    # One-half variants keep B·C equal to the two-half ones.
    assert cfg.clones_stage2 == (8 if unmixed and mixed else 16)
    # MB-UA keeps Stage 1's 12-layer global target; the others use the official last layer.
    assert cfg.global_target_unmixed_layers == ("all" if variant == "MB-UA" else None)


def test_yaml_overrides_apply_after_the_preset():
    cfg = variant_config("SSLAM", {"mask_prob": 0.7}, {"srl_aggregation": "max", "global_target_unmixed_layers": "all"})
    assert cfg.mask_prob == 0.7 and cfg.srl_aggregation == "max" and cfg.global_target_unmixed_layers == "all"
    base = ObjectiveConfig(clones_stage2=4)
    assert variant_config("MB-UA-PMA", base).clones_stage2 == 4


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ConfigError, match="MB-UA, MB-PMA, MB-UA-PMA, SSLAM"):
        variant_config("MB-XYZ")


def test_bad_configs_name_the_problem():
    with pytest.raises(ConfigError, match="mix_mode"):
        ObjectiveConfig(mix_mode="none")  # mixed terms on without mixing
    with pytest.raises(ConfigError, match="every loss term"):
        variant_config("MB-UA", overrides={"local_unmixed": False, "global_unmixed": False})
    with pytest.raises(ConfigError, match="srl_aggregation"):
        from_dict(ObjectiveConfig, {"srl_aggregation": "median"}, where="objective")
    with pytest.raises(ConfigError, match="objective.typo"):
        from_dict(ObjectiveConfig, {"typo": 1}, where="objective")
    with pytest.raises(ConfigError, match="norm_std"):
        ObjectiveConfig(norm_mean=-4.0)


def test_layer_counts_resolve_against_the_encoder_depth():
    assert resolve_layer_count("all", 12, "local_target_layers") == 12
    assert resolve_layer_count(3, 12, "local_target_layers") == 3
    with pytest.raises(ConfigError, match="2 layers"):
        resolve_layer_count(12, 2, "local_target_layers")
    parsed = from_dict(ObjectiveConfig, {"local_target_layers": "all", "global_target_layers_stage2": 3})
    assert parsed.local_target_layers == "all" and parsed.global_target_layers_stage2 == 3


def test_a_new_variant_starts_from_a_named_preset():
    from sslam.objective.config import variant_config

    ablation = variant_config("SSLAM-srl-max", None, {"base": "SSLAM", "srl_aggregation": "max"})
    assert ablation.srl_aggregation == "max" and ablation.srl_local
    no_global = variant_config("MB-UA-PMA-noglobal", None, {"base": "MB-UA-PMA", "global_mixed": False})
    assert not no_global.srl_local and not no_global.global_mixed and no_global.global_unmixed


def test_a_new_variant_without_a_known_base_is_refused():
    import pytest

    from sslam.runtime.errors import ConfigError
    from sslam.objective.config import variant_config

    with pytest.raises(ConfigError, match="base: <one of those>"):
        variant_config("my-ablation", None, {"srl_aggregation": "max"})
    with pytest.raises(ConfigError, match="variants.my-ablation.base: unknown preset 'SSLAMX'"):
        variant_config("my-ablation", None, {"base": "SSLAMX"})
