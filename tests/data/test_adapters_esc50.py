"""ESC-50 adapter on a tiny copy of the real layout (meta/esc50.csv + audio/*.wav)."""
import numpy as np
import pytest
import soundfile

from sslam.data.adapters.esc50 import build_esc50
from sslam.runtime.errors import ManifestError

META_HEADER = "filename,fold,target,category,esc10,src_file,take\n"
# (filename, fold, target, category, esc10); targets deliberately not in file order
CLIPS = [
    ("1-100032-A-0.wav", 1, 0, "dog", "True"),
    ("2-100038-A-14.wav", 2, 14, "chirping_birds", "False"),
    ("3-100648-A-1.wav", 3, 1, "rooster", "True"),
    ("4-101296-A-19.wav", 4, 19, "thunderstorm", "False"),
    ("5-103415-A-0.wav", 5, 0, "dog", "True"),
]


@pytest.fixture
def esc50_root(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "audio").mkdir()
    lines = [f"{name},{fold},{target},{category},{esc10},{name.split('-')[1]},{name.split('-')[2]}\n"
             for name, fold, target, category, esc10 in CLIPS]
    (tmp_path / "meta" / "esc50.csv").write_text(META_HEADER + "".join(lines))
    for index, (name, *_) in enumerate(CLIPS):
        samples = 4410 * (index + 1)  # different lengths so durations are checked per file
        soundfile.write(tmp_path / "audio" / name, np.zeros(samples, dtype=np.float32), 44100)
    return tmp_path


def test_rows_folds_and_class_order(esc50_root):
    manifest = build_esc50(esc50_root)
    table = manifest.table
    assert manifest.classes == ["dog", "rooster", "chirping_birds", "thunderstorm"]  # by target index
    assert table["fold"].tolist() == [1, 2, 3, 4, 5]
    assert table["labels"].tolist() == [category for _, _, _, category, _ in CLIPS]
    assert table["clip_id"][0] == "1-100032-A-0" and set(table["split"]) == {"train"}
    assert table["sample_rate"].tolist() == [44100] * 5
    assert table["duration"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert manifest.audio_path(0) == (esc50_root / "audio" / CLIPS[0][0]).resolve()


def test_esc10_subset_and_no_probe(esc50_root):
    manifest = build_esc50(esc50_root, esc10_only=True, probe=False)
    assert manifest.classes == ["dog", "rooster"] and len(manifest) == 3
    assert manifest.table["sample_rate"].eq(0).all()


def test_layout_errors(esc50_root):
    (esc50_root / "audio" / CLIPS[2][0]).unlink()
    with pytest.raises(ManifestError, match="1 file\\(s\\) missing.*3-100648-A-1.wav"):
        build_esc50(esc50_root)
    meta = esc50_root / "meta" / "esc50.csv"
    meta.write_text(META_HEADER + "1-100032-A-0.wav,6,0,dog,True,100032,A\n")
    with pytest.raises(ManifestError, match=r"esc50\.csv:2: fold 6"):
        build_esc50(esc50_root)
    meta.write_text("filename,fold,category\n")
    with pytest.raises(ManifestError, match="missing column"):
        build_esc50(esc50_root)
