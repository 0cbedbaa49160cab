"""IDMT-DESED-FL adapter on the assumed DESED-style layout (see docs/manifest.md)."""
import numpy as np
import pytest
import soundfile

from sslam.data.adapters.desed_fl import DESED_CLASSES, build_desed_fl
from sslam.runtime.errors import ManifestError

HEADER = "filename\tonset\toffset\tevent_label\n"


@pytest.fixture
def desed_root(tmp_path):
    for split, names in {"train": ["a", "b", "c"], "test": ["d"]}.items():
        folder = tmp_path / "audio" / split / "soundscapes"
        folder.mkdir(parents=True)
        for name in names:
            soundfile.write(folder / f"{name}.wav", np.zeros(1600, dtype=np.float32), 16000)
    (tmp_path / "metadata" / "train").mkdir(parents=True)
    # train: one tsv per sub-folder (DESED style), filenames may carry a folder prefix
    (tmp_path / "metadata" / "train" / "soundscapes.tsv").write_text(HEADER + (
        "a.wav\t0.0\t1.5\tSpeech\n"
        "soundscapes/a.wav\t2.0\t3.0\tDog\n"
        "a.wav\t4.0\t5.0\tSpeech\n"
        "b.wav\t0.5\t9.0\tFrying\n"
        "c.wav\t\t\t\n"
    ))
    (tmp_path / "metadata" / "test.tsv").write_text(HEADER + "d.wav\t0.0\t1.0\tCat\nd.wav\t0.2\t2.0\tBlender\n")
    return tmp_path


def test_clip_labels_from_strong_annotations(desed_root):
    manifest = build_desed_fl(desed_root)
    table = manifest.table.set_index("clip_id")
    assert manifest.classes == DESED_CLASSES
    assert table.at["train/a", "labels"] == "Dog;Speech" and table.at["train/a", "polyphony"] == 2
    assert table.at["train/b", "labels"] == "Frying"
    assert table.at["train/c", "labels"] == "" and table.at["train/c", "polyphony"] == 0
    assert table.at["test/d", "labels"] == "Blender;Cat" and table.at["test/d", "split"] == "test"
    assert table["sample_rate"].eq(16000).all()


def test_layout_errors(desed_root):
    with pytest.raises(ManifestError, match="unknown event label 'Dog'"):
        build_desed_fl(desed_root, classes=["Speech", "Frying", "Cat", "Blender"])
    (desed_root / "audio" / "test" / "soundscapes" / "d.wav").unlink()
    with pytest.raises(ManifestError, match="without audio, e.g. d.wav"):
        build_desed_fl(desed_root)
    with pytest.raises(ManifestError, match="no annotations for split 'eval'"):
        (desed_root / "audio" / "eval").mkdir()
        build_desed_fl(desed_root, splits=["eval"])
