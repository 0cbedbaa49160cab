"""Speech Commands v1 (ks1) and v2 (ks2) adapters on a tiny copy of the real layout."""
import numpy as np
import pytest
import soundfile

from sslam.data.adapters.speech_commands import KS1_KEYWORDS, build_ks1, build_ks2
from sslam.runtime.errors import ManifestError

RATE = 16000


def write_wav(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(seconds * RATE), dtype=np.float32), RATE)


def make_layout(root, words, noise_seconds=(10.0, 5.5)):
    """Two clips per word; the second of each word in validation / testing lists alternately."""
    validation, testing = [], []
    for index, word in enumerate(words):
        for take in range(2):
            write_wav(root / word / f"spk{index:02d}_nohash_{take}.wav", 0.05)
        (validation if index % 2 else testing).append(f"{word}/spk{index:02d}_nohash_1.wav")
    for index, seconds in enumerate(noise_seconds):
        write_wav(root / "_background_noise_" / f"noise{index}.wav", seconds)
    (root / "validation_list.txt").write_text("\n".join(validation) + "\n")
    (root / "testing_list.txt").write_text("\n".join(testing) + "\n")


def test_ks1_classes_unknown_and_silence(tmp_path):
    make_layout(tmp_path, KS1_KEYWORDS + ["bed", "cat"])
    manifest = build_ks1(tmp_path)
    table = manifest.table
    assert manifest.classes == KS1_KEYWORDS + ["_silence_", "_unknown_"]
    assert table.set_index("clip_id").at["bed/spk10_nohash_0", "labels"] == "_unknown_"
    assert table.set_index("clip_id").at["yes/spk00_nohash_1", "split"] == "test"
    assert table.set_index("clip_id").at["no/spk01_nohash_1", "split"] == "valid"
    silence = table[table["labels"] == "_silence_"]
    # 10 s -> 10 one-second windows (8 train, 1 valid, 1 test); 5.5 s -> 5 windows (4 train, 1 valid)
    assert len(silence) == 15
    first = silence[silence["noise_file"] == "noise0.wav"]
    assert first["split"].tolist() == ["train"] * 8 + ["valid", "test"]
    assert first["noise_offset_seconds"].tolist() == [float(i) for i in range(10)]
    for path in silence["path"]:
        assert soundfile.info(path).frames == RATE  # real one-second files, whatever reads them
    assert silence["path"].str.contains("/_silence_windows_/").all()
    assert set(silence["duration"]) == {1.0} and set(silence["sample_rate"]) == {RATE}
    again = build_ks1(tmp_path, probe=False)  # the window folder is not mistaken for a word
    assert len(again) == len(manifest) and set(again.table["labels"]) == set(table["labels"])
    words = table[table["labels"] != "_silence_"]
    assert len(words) == 24 and words["sample_rate"].eq(RATE).all()


def test_ks1_with_the_released_test_set(tmp_path):
    make_layout(tmp_path / "train", KS1_KEYWORDS + ["bed"])
    write_wav(tmp_path / "test" / "_silence_" / "a.wav", 1.0)
    write_wav(tmp_path / "test" / "yes" / "b.wav", 1.0)
    manifest = build_ks1(tmp_path / "train", test_set=str(tmp_path / "test"), probe=False,
                         silence_dir=str(tmp_path / "cut"))
    cut = manifest.table[(manifest.table["labels"] == "_silence_") & (manifest.table["split"] != "test")]
    assert len(cut) and cut["path"].str.startswith(str(tmp_path / "cut")).all()
    test = manifest.table[manifest.table["split"] == "test"]
    assert sorted(test["labels"]) == ["_silence_", "yes"] and test["clip_id"].str.startswith("testset/").all()
    write_wav(tmp_path / "test" / "sheila" / "c.wav", 1.0)
    with pytest.raises(ManifestError, match="sheila"):
        build_ks1(tmp_path / "train", test_set=str(tmp_path / "test"), probe=False)


def test_ks2_words_are_the_classes(tmp_path):
    words = [f"word{i:02d}" for i in range(35)]
    make_layout(tmp_path, words, noise_seconds=(2.0,))
    manifest = build_ks2(tmp_path, probe=False)
    assert manifest.classes == sorted(words) and len(manifest) == 70
    assert manifest.table["split"].value_counts().to_dict() == {"train": 35, "test": 18, "valid": 17}
    with pytest.raises(ManifestError, match="expected 36"):
        build_ks2(tmp_path, expected_words=36)


def test_missing_listed_file_is_an_error(tmp_path):
    make_layout(tmp_path, KS1_KEYWORDS)
    (tmp_path / "yes" / "spk00_nohash_1.wav").unlink()
    with pytest.raises(ManifestError, match="yes/spk00_nohash_1.wav"):
        build_ks1(tmp_path)
