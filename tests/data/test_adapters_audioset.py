"""AudioSet adapter: segment CSVs, class lists, download manifest, availability scan, weights."""
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sslam.cli import main
from sslam.data.adapters.audioset import build_audioset, download_command, read_segments
from sslam.data.manifest import read_manifest
from sslam.runtime.errors import ManifestError

SHARED = Path("/work/shared/data")
needs_shared = pytest.mark.skipif(not (SHARED / "audioset").is_dir(), reason="shared AudioSet metadata not present")

HEADER = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=5\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
)
ONTOLOGY = [
    {"id": "/m/root", "name": "Root", "child_ids": ["/m/a", "/m/b"], "restrictions": ["abstract"]},
    {"id": "/m/a", "name": "A, with comma", "child_ids": ["/m/a1"], "restrictions": []},
    {"id": "/m/a1", "name": "A one", "child_ids": [], "restrictions": []},
    {"id": "/m/b", "name": "B", "child_ids": [], "restrictions": []},
]


@pytest.fixture
def audioset_root(tmp_path):
    root = tmp_path / "meta"
    root.mkdir()
    (root / "ontology.json").write_text(json.dumps(ONTOLOGY))
    (root / "balanced_train_segments.csv").write_text(HEADER + (
        '--id1aaaaaa, 30.000, 40.000, "/m/a,/m/a1"\n'
        'id2bbbbbbb, 0.000, 10.000, "/m/b"\n'
        'id3ccccccc, 5.000, 15.000, "/m/a1,/m/b"\n'
    ))
    (root / "eval_segments.csv").write_text(HEADER + 'id4ddddddd, 0.000, 10.000, "/m/a"\n')
    return root


def test_segment_csv_parsing_and_line_numbered_errors(audioset_root):
    segments = read_segments(audioset_root / "balanced_train_segments.csv")
    assert segments["ytid"].tolist() == ["--id1aaaaaa", "id2bbbbbbb", "id3ccccccc"]
    assert segments["labels"][0] == ["/m/a", "/m/a1"] and segments["start_seconds"][0] == 30.0
    broken = audioset_root / "eval_segments.csv"
    broken.write_text(HEADER + 'id4ddddddd, 0.000, 10.000, "/m/a"\nid5eeeeeee, 0.000, "/m/a"\n')
    with pytest.raises(ManifestError, match=r"eval_segments\.csv:5"):
        read_segments(broken)


def test_class_list_formats_and_derived_list(audioset_root, tmp_path, caplog):
    derived = build_audioset(audioset_root)
    assert "no class_list given" in caplog.text  # a derived class order is announced, not silent
    assert derived.classes == ["/m/a", "/m/a1", "/m/b"]  # ids seen in the CSVs, sorted
    assert derived.class_names == ["A, with comma", "A one", "B"]
    indices = tmp_path / "class_labels_indices.csv"
    indices.write_text('index,mid,display_name\n0,/m/b,"B"\n1,/m/a,"A, with comma"\n2,/m/a1,"A one"\n')
    descriptors = tmp_path / "label_descriptors.csv"
    descriptors.write_text('1,/m/a,"A, with comma"\n0,/m/b,"B"\n2,/m/a1,"A one"\n')
    for class_list in (indices, descriptors):
        manifest = build_audioset(audioset_root, class_list=str(class_list))
        assert manifest.classes == ["/m/b", "/m/a", "/m/a1"] and manifest.class_names[1] == "A, with comma"
    descriptors.write_text('0,/m/a,"A"\n1,/m/a1,"A one"\n')
    with pytest.raises(ManifestError, match=r"balanced_train_segments\.csv:5: label id '/m/b'"):
        build_audioset(audioset_root, class_list=str(descriptors))
    (audioset_root / "eval_segments.csv").write_text(HEADER + 'id4ddddddd, 0.000, 10.000, "/m/a,/m/zzz"\n')
    with pytest.raises(ManifestError, match=r"eval_segments\.csv:4: label id '/m/zzz'"):
        build_audioset(audioset_root)  # a derived class list only takes ids the ontology knows


def test_download_manifest_rows_and_command(audioset_root):
    manifest = build_audioset(audioset_root)
    table = manifest.table
    assert table["split"].tolist() == ["balanced_train"] * 3 + ["eval"]
    first = table.iloc[0]
    assert first["file_name"] == "Y--id1aaaaaa.wav" and first["path"] == "balanced_train/Y--id1aaaaaa.wav"
    assert first["url"] == "https://www.youtube.com/watch?v=--id1aaaaaa"
    assert first["labels"] == "/m/a;/m/a1" and first["duration"] == 10.0
    command = download_command(first, "/dl/balanced_train", sample_rate=32000)
    words = shlex.split(command)
    assert words[0] == "ffmpeg" and words[-1] == "/dl/balanced_train/Y--id1aaaaaa.wav"
    assert words[words.index("-ss") + 1] == "30.000" and words[words.index("-t") + 1] == "10.000"
    assert "yt-dlp" in words[words.index("-i") + 1] and first["url"] in command
    assert words[words.index("-ar") + 1] == "32000"
    assert len(build_audioset(audioset_root, set="as20k")) == 3 and len(build_audioset(audioset_root, set="eval")) == 1
    with pytest.raises(ManifestError, match="unbalanced_train_segments.csv"):
        build_audioset(audioset_root, set="as2m")  # a named set needs every one of its CSVs


def test_sampling_weights_follow_the_inverse_label_frequency_recipe(audioset_root):
    table = build_audioset(audioset_root).table.set_index("clip_id")
    # balanced counts: /m/a 1, /m/a1 2, /m/b 2; eval is counted on its own (/m/a 1)
    def term(count):
        return 1000.0 / (count + 0.01)
    assert table.at["--id1aaaaaa", "weight"] == pytest.approx(term(1) + term(2))
    assert table.at["id2bbbbbbb", "weight"] == pytest.approx(term(2))
    assert table.at["id3ccccccc", "weight"] == pytest.approx(term(2) + term(2))
    assert table.at["id4ddddddd", "weight"] == pytest.approx(term(1))
    assert "weight" not in build_audioset(audioset_root, weights=False).table.columns


def test_availability_scan_through_the_cli(audioset_root, tmp_path, capsys):
    audio = tmp_path / "downloads"
    (audio / "part1").mkdir(parents=True)
    (audio / "part2" / "deep").mkdir(parents=True)
    soundfile.write(audio / "part1" / "Y--id1aaaaaa.wav", np.zeros(1600, dtype=np.float32), 16000)
    soundfile.write(audio / "part2" / "deep" / "Yid3ccccccc.flac", np.zeros(1600, dtype=np.float32), 16000)
    soundfile.write(audio / "part2" / "Yid4ddddddd.ogg", np.zeros(1600, dtype=np.float32), 16000)
    out = tmp_path / "as20k.tsv"
    code = main(["manifest", "--adapter", "audioset", "--root", str(audioset_root), "--option", "set=as20k",
                 "--option", f"audio_dir={audio}", "--out", str(out)])
    assert code == 0 and "missing {'balanced_train': 1}" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert manifest.table["clip_id"].tolist() == ["--id1aaaaaa", "id3ccccccc"]
    assert manifest.table["split"].tolist() == ["train", "train"]
    assert manifest.table["youtube_start_seconds"].tolist() == [30.0, 5.0]
    assert "start_seconds" not in manifest.table.columns  # the files are already the segments
    assert manifest.audio_path(1) == (audio / "part2" / "deep" / "Yid3ccccccc.flac").resolve()
    report = json.loads(out.with_suffix(".availability.json").read_text())
    assert report["expected"] == {"balanced_train": 3} and report["found"] == {"balanced_train": 2}
    assert report["missing_ids"] == {"balanced_train": ["id2bbbbbbb"]}
    evaluation = build_audioset(audioset_root, set="eval", audio_dir=str(audio))
    assert evaluation.table["split"].tolist() == ["eval"]


@needs_shared
def test_real_segment_files_and_as20k_ids():
    manifest = build_audioset(SHARED / "audioset", class_list=str(SHARED / "sslam_manifests/as20k/label_descriptors.csv"))
    counts = manifest.table["split"].value_counts()
    assert counts["balanced_train"] == 22160 and counts["eval"] == 20371  # num_ytids in the CSV headers
    assert manifest.num_classes == 527
    used = set(manifest.table["labels"].str.split(";").explode())
    assert used == set(manifest.classes)  # every label id known, every class used
    balanced = set(manifest.table.loc[manifest.table["split"] == "balanced_train", "ytid"])
    official = [line.split("\t")[0] for line in (SHARED / "sslam_manifests/as20k/train.lbl").read_text().splitlines() if line]
    assert all(name.startswith("Y") for name in official)
    assert {name[1:] for name in official} <= balanced
