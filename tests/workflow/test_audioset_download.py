"""The AudioSet download step renders one yt-dlp + ffmpeg command per MISSING clip, runs them, and records
failures without stopping (here there is no network, so every fetch fails and is listed)."""
from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from sslam.data.manifest import Manifest, write_manifest

SCRIPT = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "audioset_download.py"


def test_only_missing_clips_are_fetched_and_failures_recorded(tmp_path):
    rows = pd.DataFrame({
        "clip_id": ["present", "absent"], "path": ["balanced_train/Ypresent.wav", "balanced_train/Yabsent.wav"],
        "split": ["balanced_train"] * 2, "labels": ["/m/a"] * 2, "subset": ["balanced_train"] * 2,
        "ytid": ["present", "absent"], "url": ["https://www.youtube.com/watch?v=present",
                                             "https://www.youtube.com/watch?v=absent"],
        "start_seconds": [0.0, 10.0], "end_seconds": [10.0, 20.0], "file_name": ["Ypresent.wav", "Yabsent.wav"],
    })
    manifest = write_manifest(Manifest(rows, classes=["/m/a"], class_names=["a"]), tmp_path / "download" / "manifest.tsv")
    audio = tmp_path / "audio" / "balanced_train"
    audio.mkdir(parents=True)
    (audio / "Ypresent.flac").write_bytes(b"")  # any of .wav/.flac/.ogg counts as downloaded
    outputs = SimpleNamespace(commands=str(tmp_path / "download" / "commands.sh"),
                              done=str(tmp_path / "download" / "download.done"))
    snakemake = SimpleNamespace(input=[str(manifest)], output=outputs, threads=1, log=[str(tmp_path / "log.txt")],
                                params=SimpleNamespace(audio_dir=str(tmp_path / "audio"), sample_rate=16000))
    runpy.run_path(str(SCRIPT), init_globals={"snakemake": snakemake})
    commands = Path(outputs.commands).read_text().splitlines()[1:]
    assert len(commands) == 1 and "absent" in commands[0] and "yt-dlp" in commands[0] and "-ar 16000" in commands[0]
    failed = pd.read_csv(tmp_path / "download" / "failed.tsv", sep="\t")
    assert failed.ytid.tolist() == ["absent"]
    assert Path(outputs.done).read_text().startswith("0 fetched, 1 failed")
