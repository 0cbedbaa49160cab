"""The embedded synthetic corpus: determinism, set layout, file formats, class variation and separability."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile
import yaml

from data_helpers import folder_digest
from sslam.audio.front_end import load_raw_fbank
from sslam.cli import main
from sslam.runtime.configuration import from_dict
from sslam.data.manifest import read_manifest
from sslam.data.synthetic import (CLASS_IDS, EVENT_CLASSES, SET_NAMES, SyntheticConfig, generate_set, make_event,
                                  set_sizes)
from sslam.runtime.errors import ConfigError


def test_at_least_twelve_classes_with_unique_ids():
    assert len(EVENT_CLASSES) >= 12
    assert len(set(CLASS_IDS)) == len(CLASS_IDS)


@pytest.mark.parametrize("label", CLASS_IDS)
def test_events_vary_within_their_class(label):
    events = [make_event(label, np.random.default_rng(seed), 16000) for seed in range(4)]
    for event in events:
        assert event.dtype == np.float32 and np.isfinite(event).all()
        assert np.isclose(np.abs(event).max(), 1.0)
        assert 0.02 * 16000 < len(event) <= 2.0 * 16000
    # Different draws differ in length or in their magnitude spectrum, not only in noise phase.
    spectra = [np.abs(np.fft.rfft(event, 16000))[:4000] for event in events]
    distinct = {len(event) for event in events}
    assert len(distinct) > 1 or max(np.abs(spectra[0] - s).sum() / spectra[0].sum() for s in spectra[1:]) > 0.2


def test_sets_follow_the_contract(tiny_corpus, tiny):
    assert set(tiny_corpus) == set(SET_NAMES)
    pretrain, mono, poly, polyphony = (read_manifest(tiny_corpus[name]) for name in SET_NAMES)
    assert len(pretrain) == tiny["pretrain_clips"]
    assert set(pretrain.table["split"]) == {"unlabeled"} and (pretrain.table["labels"] == "").all()

    # mono: one label per clip, every class equally often, 5 folds, each class spread over the folds
    assert len(mono) == tiny["mono_clips_per_class"] * len(CLASS_IDS)
    assert all(len(mono.labels_of(row)) == 1 for row in range(len(mono)))
    assert set(mono.table["labels"].value_counts()) == {tiny["mono_clips_per_class"]}
    assert set(mono.table["fold"]) <= set(range(1, 6))

    assert (poly.table["split"] == "train").sum() == tiny["poly_train_clips"]
    assert (poly.table["split"] == "test").sum() == tiny["poly_test_clips"]
    assert all(1 <= len(poly.labels_of(row)) <= 6 for row in range(len(poly)))

    counts = [len(polyphony.labels_of(row)) for row in range(len(polyphony))]
    assert list(polyphony.table["polyphony"]) == counts
    assert sorted(set(counts)) == list(range(1, tiny["polyphony_max_events"] + 1))
    assert set(polyphony.table["split"]) == {"test"}
    for manifest in (pretrain, mono, poly, polyphony):
        assert manifest.classes == list(CLASS_IDS)


def test_set_sizes_are_the_generated_manifests_split_counts(tiny_corpus, tiny):
    config = SyntheticConfig(**tiny)
    for name in SET_NAMES:
        counts = read_manifest(tiny_corpus[name]).table["split"].value_counts()
        assert set_sizes(name, config) == {str(split): int(count) for split, count in counts.items()}
    assert set_sizes("poly", SyntheticConfig(**{**tiny, "poly_test_clips": 0})) == {"train": tiny["poly_train_clips"]}
    with pytest.raises(ConfigError, match="unknown synthetic set"):
        set_sizes("mixtures", config)


def test_files_are_real_16_bit_audio_with_a_few_odd_formats(tiny_corpus, tiny):
    manifest = read_manifest(tiny_corpus["poly"])
    formats = set()
    for row in range(len(manifest)):
        info = soundfile.info(str(manifest.audio_path(row)))
        assert info.subtype == "PCM_16"
        assert info.samplerate == manifest.table.at[row, "sample_rate"]
        assert abs(info.duration - tiny["clip_seconds"]) < 1e-3
        formats.add((info.samplerate, info.channels))
    assert formats == {(16000, 1), (16000, 2), (22050, 1)}


def test_generation_is_deterministic_and_seeded(tmp_path, tiny):
    small = SyntheticConfig(**{**tiny, "mono_clips_per_class": 1})
    generate_set("mono", small, tmp_path / "a")
    generate_set("mono", small, tmp_path / "b")
    generate_set("mono", SyntheticConfig(**{**tiny, "mono_clips_per_class": 1, "seed": 1}), tmp_path / "c")
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b")
    assert folder_digest(tmp_path / "a") != folder_digest(tmp_path / "c")


def test_classes_are_separable_by_a_trivial_spectral_feature(tmp_path, tiny):
    """Nearest centroid on (mean, std) of the log-mel over time, leave-one-fold-out on `mono`."""
    config = SyntheticConfig(**{**tiny, "mono_clips_per_class": 5})
    manifest = read_manifest(generate_set("mono", config, tmp_path))
    features = []
    for row in range(len(manifest)):
        fbank = load_raw_fbank(manifest.audio_path(row)).numpy()
        features.append(np.concatenate([fbank.mean(0), fbank.std(0)]))
    features = np.stack(features)
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    labels = np.array([manifest.label_indices(row)[0] for row in range(len(manifest))])
    folds = manifest.table["fold"].to_numpy()
    correct = 0
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        centroids = np.stack([features[train & (labels == c)].mean(0) for c in range(len(CLASS_IDS))])
        distances = ((features[test, None, :] - centroids[None]) ** 2).sum(-1)
        correct += (distances.argmin(1) == labels[test]).sum()
    accuracy = correct / len(labels)
    print(f"nearest-centroid leave-one-fold-out accuracy: {accuracy:.3f}")
    assert accuracy > 4 / len(CLASS_IDS), f"nearest-centroid accuracy {accuracy:.2f} is too close to chance"


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="synthetic.clips"):
        from_dict(SyntheticConfig, {"clips": 3}, where="synthetic")
    with pytest.raises(ConfigError, match="polyphony_max_events"):
        SyntheticConfig(polyphony_max_events=len(CLASS_IDS) + 1)
    with pytest.raises(ConfigError, match="poly_events"):
        from_dict(SyntheticConfig, {"poly_events": [3, 2]}, where="synthetic")
    assert from_dict(SyntheticConfig, {"poly_events": [1, 2]}).poly_events == (1, 2)


def test_cli_writes_the_requested_sets(tmp_path, capsys, tiny):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"synthetic": {**tiny, "seed": 3, "odd_format_every": 0}}))
    assert main(["synth", "--config", str(config), "--out", str(tmp_path / "out"), "--sets", "polyphony"]) == 0
    manifest = read_manifest(tmp_path / "out" / "polyphony" / "manifest.tsv")
    assert len(manifest) == tiny["polyphony_clips"]
    assert set(manifest.table["sample_rate"]) == {16000}
    assert not (tmp_path / "out" / "mono").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"synthetic": {"clip_second": 1.0}}))
    assert main(["synth", "--config", str(bad), "--out", str(tmp_path / "x")]) == 1
    assert "synthetic.clip_second" in capsys.readouterr().err


def test_a_poly_test_split_by_polyphony_keeps_the_training_clips(tmp_path, tiny, tiny_corpus):
    config = SyntheticConfig(**{**tiny, "poly_test_by_polyphony": True})
    poly = read_manifest(generate_set("poly", config, tmp_path))
    default = read_manifest(tiny_corpus["poly"])
    train, test = poly.table[poly.table["split"] == "train"], poly.table[poly.table["split"] == "test"]
    assert list(train["labels"]) == list(default.table[default.table["split"] == "train"]["labels"])
    # the bins 1..max in turn, counted in distinct classes, and the column on every row (integers)
    assert list(test["polyphony"]) == [k % tiny["polyphony_max_events"] + 1 for k in range(tiny["poly_test_clips"])]
    assert all(len(poly.labels_of(row)) == poly.table.at[row, "polyphony"] for row in range(len(poly)))
    assert poly.table["polyphony"].dtype.kind == "i"
