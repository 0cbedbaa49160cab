"""Caching a 1-hour file stays under 1 GB: the front end decodes only what the target length needs (issue 10.4).

The build runs in a fresh process whose peak resident memory (VmHWM) is the measurement; importing torch
alone accounts for most of it, so the test also compares with a 10-s clip.
"""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import soundfile

from sslam.data.manifest import Manifest, write_manifest

REPO = Path(__file__).resolve().parents[2]
TARGET = 1024
CHILD = """
import sys
from sslam.data.cache import build_shard
report = build_shard(sys.argv[1], sys.argv[2], target_length=int(sys.argv[3]))
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(report.written, report.skipped, int(status["VmHWM"].split()[0]) * 1024)
"""


def write_flac(path: Path, minutes: float, sample_rate: int = 16000) -> Path:
    """10 s of tone, then silence: a 1-h file is a few hundred kB of FLAC but 3600 s of samples decoded."""
    time_axis = np.arange(10 * sample_rate) / sample_rate
    with soundfile.SoundFile(str(path), "w", samplerate=sample_rate, channels=1, format="FLAC") as stream:
        stream.write((0.3 * np.sin(2 * np.pi * 440 * time_axis)).astype(np.float32))
        left = int(minutes * 60 * sample_rate) - len(time_axis)
        block = np.zeros(60 * sample_rate, dtype=np.float32)
        while left > 0:
            stream.write(block[:min(left, len(block))])
            left -= len(block)
    return path


def cache_in_a_fresh_process(audio: Path, folder: Path) -> tuple[int, int, int]:
    manifest = folder / f"{audio.stem}.tsv"
    write_manifest(Manifest(pd.DataFrame({"clip_id": [audio.stem], "path": [str(audio)], "split": ["train"]})), manifest)
    result = subprocess.run([sys.executable, "-c", CHILD, str(manifest), str(folder / f"{audio.stem}.h5"), str(TARGET)],
                            capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    written, skipped, peak = map(int, result.stdout.split()[-3:])
    return written, skipped, peak


def test_a_one_hour_file_caches_under_one_gigabyte(tmp_path):
    hour = write_flac(tmp_path / "hour.flac", 60)
    short = write_flac(tmp_path / "short.flac", 10 / 60)
    written, skipped, peak_hour = cache_in_a_fresh_process(hour, tmp_path)
    _, _, peak_short = cache_in_a_fresh_process(short, tmp_path)
    assert (written, skipped) == (1, 0)
    assert peak_hour < 2**30, f"peak {peak_hour / 2**20:.0f} MiB"
    # The hour costs what ten seconds cost: memory follows the target length, not the file.
    assert peak_hour - peak_short < 64 * 2**20, f"{peak_hour / 2**20:.0f} vs {peak_short / 2**20:.0f} MiB"
    with h5py.File(tmp_path / "hour.h5") as shard:
        assert shard["fbank"].shape == (1, TARGET, 128)
        assert shard["num_frames"][0] == 1 + (3600 * 16000 - 400) // 160  # the whole file's length, from its header
