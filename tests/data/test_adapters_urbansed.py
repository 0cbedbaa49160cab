"""URBAN-SED adapter on a tiny copy of the real layout (audio/ + annotations/ per split)."""
import numpy as np
import pytest
import soundfile

from sslam.data.adapters.urbansed import CLASSES, build_urbansed
from sslam.runtime.errors import ManifestError

# split folder -> {soundscape name: [(onset, offset, class), ...]}
SOUNDSCAPES = {
    "train": {
        "soundscape_train_uniform0": [(0.5, 2.0, "siren"), (1.0, 4.0, "dog_bark"), (5.0, 6.0, "siren")],
        "soundscape_train_uniform1": [(0.0, 3.0, "jackhammer"), (4.0, 5.0, "jackhammer")],
    },
    "validate": {"soundscape_validate_bimodal0": [(0.1, 1.0, "car_horn"), (0.2, 0.9, "gun_shot"), (2.0, 3.0, "siren")]},
    "test": {"soundscape_test_unimodal0": []},
}


@pytest.fixture
def urbansed_root(tmp_path):
    for split, scapes in SOUNDSCAPES.items():
        (tmp_path / "audio" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
        for name, events in scapes.items():
            soundfile.write(tmp_path / "audio" / split / f"{name}.wav", np.zeros(4410, dtype=np.float32), 44100)
            lines = "".join(f"{onset:.6f}\t{offset:.6f}\t{label}\n" for onset, offset, label in events)
            (tmp_path / "annotations" / split / f"{name}.txt").write_text(lines)
    return tmp_path


def test_polyphonic_filter_and_polyphony_column(urbansed_root):
    manifest = build_urbansed(urbansed_root)
    table = manifest.table.set_index("clip_id")
    assert list(table.index) == ["soundscape_train_uniform0", "soundscape_validate_bimodal0"]
    assert table.at["soundscape_train_uniform0", "labels"] == "dog_bark;siren"  # class-list order, deduplicated
    assert table.at["soundscape_train_uniform0", "polyphony"] == 2
    assert table.at["soundscape_validate_bimodal0", "split"] == "valid"
    assert table.at["soundscape_validate_bimodal0", "polyphony"] == 3
    assert manifest.classes == CLASSES


def test_keep_everything_when_the_filter_is_off(urbansed_root):
    manifest = build_urbansed(urbansed_root, min_distinct_labels=0, probe=False)
    table = manifest.table.set_index("clip_id")
    assert len(table) == 4
    assert table.at["soundscape_train_uniform1", "polyphony"] == 1
    assert table.at["soundscape_test_unimodal0", "labels"] == "" and table.at["soundscape_test_unimodal0", "split"] == "test"


def test_annotation_errors(urbansed_root):
    bad = urbansed_root / "annotations" / "train" / "soundscape_train_uniform1.txt"
    bad.write_text("0.0\t3.0\tjackhammer\n1.0\tsiren\n")
    with pytest.raises(ManifestError, match=r"soundscape_train_uniform1\.txt:2"):
        build_urbansed(urbansed_root)
    bad.write_text("0.0\t3.0\tbagpipes\n")
    with pytest.raises(ManifestError, match="unknown URBAN-SED class 'bagpipes'"):
        build_urbansed(urbansed_root)
    bad.unlink()
    with pytest.raises(ManifestError, match="no annotation file"):
        build_urbansed(urbansed_root)
