"""SPASS adapter: the official per-scene fairseq manifests (+ audio) -> canonical manifest."""
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sslam.data.adapters.spass import build_spass
from sslam.runtime.errors import ManifestError

SHARED = Path("/work/shared/data/sslam_manifests")


def make_scene(root: Path, scene: str, clips: dict[str, list[tuple[str, list[str]]]], classes: list[str]) -> None:
    """Official layout: manifest_SPASS_<Scene>/{split}.tsv|.lbl + label_descriptors.csv, audio in <Scene>_audio_files/."""
    folder = root / f"manifest_SPASS_{scene.capitalize()}"
    folder.mkdir(parents=True)
    audio = root / f"{scene.capitalize()}_audio_files"
    audio.mkdir(exist_ok=True)
    for split, rows in clips.items():
        (folder / f"{split}.tsv").write_text("/authors/own/path/SPASS/\n" + "".join(
            f"{audio.name}/{name}.wav\t44100\n" for name, _ in rows))
        (folder / f"{split}.lbl").write_text("".join(f"{audio.name}/{name}\t{','.join(labels)}\n" for name, labels in rows))
        for name, _ in rows:
            soundfile.write(audio / f"{name}.wav", np.zeros(4410, dtype=np.float32), 44100)
    (folder / "label_descriptors.csv").write_text("".join(f"{i},{c},{c}\n" for i, c in enumerate(classes)))


def test_scene_layout_with_local_audio(tmp_path):
    make_scene(tmp_path, "park", {
        "train": [("park00001", ["talk", "bird", "talk"]), ("park00002", ["dog"])],
        "eval": [("park03751", ["bird", "dog", "talk"])],
    }, ["talk", "bird", "dog"])
    manifest = build_spass(tmp_path, scene="park", probe=True)
    table = manifest.table
    assert table["clip_id"].tolist() == ["Park_audio_files/park00001", "Park_audio_files/park00002", "Park_audio_files/park03751"]
    assert table["split"].tolist() == ["train", "train", "eval"]
    assert table["polyphony"].tolist() == [2, 1, 3]  # distinct events: the repeated `talk` counts once
    assert manifest.audio_path(0) == (tmp_path / "Park_audio_files" / "park00001.wav").resolve()
    assert table["sample_rate"].eq(44100).all() and table["scene"].eq("park").all()


def test_scene_errors(tmp_path):
    with pytest.raises(ManifestError, match="unknown SPASS scene 'beach'"):
        build_spass(tmp_path, scene="beach")
    with pytest.raises(ManifestError, match="no SPASS market manifests"):
        build_spass(tmp_path, scene="market")
    make_scene(tmp_path, "park", {"train": [("park00001", ["talk"])], "eval": [("park03751", ["talk"])]}, ["talk"])
    with pytest.raises(ManifestError, match="not in Market_audio_files"):
        build_spass(tmp_path, scene="market", manifest_dir=str(tmp_path / "manifest_SPASS_Park"))


@pytest.mark.skipif(not (SHARED / "spass_market").is_dir(), reason="shared SPASS manifests not present")
def test_real_market_manifests():
    manifest = build_spass(SHARED, scene="market")
    counts = manifest.table["split"].value_counts().to_dict()
    lines = {split: sum(1 for line in (SHARED / f"spass_market/{split}.lbl").read_text().splitlines() if line)
             for split in ("train", "eval")}
    assert counts == lines and manifest.num_classes == 22
    label_counts = manifest.table["labels"].str.split(";").map(lambda labels: len(set(labels)))
    assert (manifest.table["polyphony"] == label_counts).all() and manifest.table["polyphony"].min() >= 1
