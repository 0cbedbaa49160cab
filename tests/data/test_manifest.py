"""fairseq manifest import/export and the `sslam manifest` command."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from sslam.cli import main
from sslam.data.adapters.fairseq import MIN_SAMPLE_SIZE, build_fairseq, export_fairseq, read_label_descriptors
from sslam.data.commands import build_manifest
from sslam.data.config import DatasetConfig
from sslam.data.manifest import Manifest, read_manifest
from sslam.runtime.errors import ConfigError, ManifestError

SHARED = Path("/work/shared/data/sslam_manifests")
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared reference manifests not present")


def count_rows(path: Path, header_lines: int = 0) -> int:
    return sum(1 for line in path.read_text().splitlines()[header_lines:] if line.strip())


def write_fairseq(folder: Path, rows, classes=("a", "b", "c")) -> None:
    """rows: (relative path, num_samples, name, labels)"""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.tsv").write_text("/data/root/\n" + "".join(f"{p}\t{n}\n" for p, n, _, _ in rows))
    (folder / "train.lbl").write_text("".join(f"{name}\t{','.join(labels)}\n" for _, _, name, labels in rows))
    (folder / "label_descriptors.csv").write_text("".join(f'{i},{c},"name {c}"\n' for i, c in enumerate(classes)))


def test_short_rows_are_dropped_with_their_labels(tmp_path):
    write_fairseq(tmp_path, [
        ("x/one.wav", 160000, "one", ["a"]),
        ("x/short.wav", MIN_SAMPLE_SIZE - 1, "short", ["b"]),
        ("x/three.wav", MIN_SAMPLE_SIZE, "three", ["c", "a"]),
    ])
    manifest = build_fairseq(tmp_path)
    assert manifest.table["clip_id"].tolist() == ["one", "three"]
    assert manifest.table["labels"].tolist() == ["a", "c;a"]  # alignment kept after the drop
    assert manifest.table["path"].tolist() == ["/data/root/x/one.wav", "/data/root/x/three.wav"]
    assert manifest.classes == ["a", "b", "c"] and manifest.class_names[0] == "name a"


def test_audio_root_override_and_malformed_rows(tmp_path):
    write_fairseq(tmp_path, [("x/one.wav", 160000, "one", ["a"])])
    assert build_fairseq(tmp_path, audio_root="/elsewhere").table["path"][0] == "/elsewhere/x/one.wav"
    (tmp_path / "train.tsv").write_text("/r\nx/one.wav 160000\n")  # a space, not a tab
    with pytest.raises(ManifestError, match=r"train\.tsv:2"):
        build_fairseq(tmp_path)
    write_fairseq(tmp_path, [("x/one.wav", 160000, "one", ["zzz"])])
    with pytest.raises(ManifestError, match="unknown label id 'zzz'"):
        build_fairseq(tmp_path)


def test_label_count_mismatch_is_an_error(tmp_path):
    write_fairseq(tmp_path, [("x/one.wav", 160000, "one", ["a"]), ("x/two.wav", 160000, "two", ["b"])])
    (tmp_path / "train.lbl").write_text("one\ta\n")
    with pytest.raises(ManifestError, match="1 label rows but"):
        build_fairseq(tmp_path)


def test_export_measures_unknown_sample_counts_and_refuses_short_clips(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "long.wav", np.zeros(16000, dtype=np.float32), 16000)
    soundfile.write(audio / "tiny.wav", np.zeros(800, dtype=np.float32), 16000)
    table = pd.DataFrame({"clip_id": ["long", "tiny"], "path": [str(audio / "long.wav"), str(audio / "tiny.wav")],
                          "split": ["train", "eval"], "labels": ["a", "b"]})
    manifest = Manifest(table, ["a", "b"])
    written = export_fairseq(manifest, tmp_path / "out", "train")
    assert written["tsv"].read_text().splitlines() == [f"{audio}/", "long.wav\t16000"]
    with pytest.raises(ManifestError, match="tiny"):
        export_fairseq(manifest, tmp_path / "out", "eval")


@needs_shared
@pytest.mark.parametrize("name", ["as20k", "spass_market"])
def test_real_manifests_import_and_round_trip(tmp_path, name):
    folder = SHARED / name
    manifest = build_fairseq(folder)
    for split in ("train", "eval"):
        rows = manifest.table[manifest.table["split"] == split]
        assert len(rows) == count_rows(folder / f"{split}.tsv", header_lines=1) == count_rows(folder / f"{split}.lbl")
    classes, _ = read_label_descriptors(folder / "label_descriptors.csv")
    assert manifest.classes == classes and len(classes) == count_rows(folder / "label_descriptors.csv")
    used = set(manifest.table["labels"].str.split(";").explode())
    assert used <= set(classes) and len(used) > 0.9 * len(classes)
    for split in ("train", "eval"):
        export_fairseq(manifest, tmp_path / "exported", split)
    again = build_fairseq(tmp_path / "exported")
    pd.testing.assert_frame_equal(again.table, manifest.table)
    assert again.classes == manifest.classes and again.class_names == manifest.class_names


def test_build_manifest_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset adapter 'nope'"):
        build_manifest(DatasetConfig(adapter="nope", root=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"datasets\.x\.root"):
        build_manifest(DatasetConfig(adapter="esc50"), where="datasets.x")
    with pytest.raises(ConfigError, match="folder not found"):
        build_manifest(DatasetConfig(adapter="esc50", root=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match=r"no option\(s\) \['colour'\]"):
        build_manifest(DatasetConfig(adapter="esc50", root=str(tmp_path), options={"colour": 1}))
    with pytest.raises(ConfigError, match=r"needs the option\(s\) \['scene'\]"):
        build_manifest(DatasetConfig(adapter="spass", root=str(tmp_path)))


def test_cli_from_config_and_from_adapter(tmp_path, capsys):
    write_fairseq(tmp_path / "fs", [("x/one.wav", 160000, "one", ["a"]), ("x/two.wav", 160000, "two", ["b", "c"])])
    config = tmp_path / "study.yaml"
    config.write_text(f"datasets:\n  tiny:\n    adapter: fairseq\n    root: {tmp_path / 'fs'}\n"
                      f"    options: {{audio_root: /audio}}\n    norm_mean: null\n")
    assert main(["manifest", "--config", str(config), "--dataset", "tiny", "--out", str(tmp_path / "a.tsv")]) == 0
    assert "2 rows, 3 classes, splits: train=2" in capsys.readouterr().out
    loaded = read_manifest(tmp_path / "a.tsv")
    assert loaded.table["path"].tolist() == ["/audio/x/one.wav", "/audio/x/two.wav"]
    assert main(["manifest", "--adapter", "fairseq", "--root", str(tmp_path / "fs"), "--option", "splits=[train]",
                 "--out", str(tmp_path / "b.tsv")]) == 0
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "b.tsv").table.drop(columns="path"),
                                  loaded.table.drop(columns="path"))
    config.write_text("datasets:\n  tiny:\n    adapter: fairseq\n    colour: red\n")
    assert main(["manifest", "--config", str(config), "--dataset", "tiny", "--out", str(tmp_path / "c.tsv")]) == 1
    assert "datasets.tiny.colour" in capsys.readouterr().err
