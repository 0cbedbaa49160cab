"""HDF5 cache shards: layout and content, sharding, skips of bad input, atomicity, and `verify`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
import yaml

import sslam.data.cache as cache_module
from sslam.audio.front_end import FrontEndConfig, fit_length, load_raw_fbank
from sslam.cli import main
from sslam.data.cache import CacheConfig, build_shard, verify_shard, verify_shard_set
from sslam.data.manifest import Manifest, read_manifest, write_manifest
from sslam.runtime.errors import CacheError

TARGET = 80   # frames; the tiny corpus has 1-s clips (98 frames), so every clip is truncated


def bad_input_manifest(tmp_path: Path, good_manifest_path: Path) -> Path:
    """Six good clips of the tiny corpus (some stereo / 22.05 kHz) plus one clip of every kind of bad input."""
    good = read_manifest(good_manifest_path)
    rows = [{"clip_id": good.table.at[row, "clip_id"], "path": str(good.audio_path(row)), "split": "train",
             "labels": good.table.at[row, "labels"]} for row in range(6)]
    audio = tmp_path / "bad_audio"
    audio.mkdir()
    tone = (0.3 * np.sin(np.arange(16000) * 0.2)).astype(np.float32)
    (audio / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt not really audio")
    soundfile.write(audio / "empty.wav", np.zeros(0, np.float32), 16000, subtype="PCM_16")
    soundfile.write(audio / "silent.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    soundfile.write(audio / "nan.wav", np.where(np.arange(16000) == 5, np.nan, tone).astype(np.float32), 16000, subtype="FLOAT")
    soundfile.write(audio / "tiny.wav", tone[:100], 16000, subtype="PCM_16")
    soundfile.write(audio / "short_8k.wav", tone[:2000], 8000, subtype="PCM_16")            # 0.25 s: padded
    soundfile.write(audio / "long_44k.wav", np.stack([np.tile(tone, 6)[:88200]] * 2, 1), 44100, subtype="PCM_16")
    for name in ("corrupt", "empty", "silent", "nan", "tiny", "missing", "short_8k", "long_44k"):
        rows.append({"clip_id": name, "path": str(audio / f"{name}.wav"), "split": "train", "labels": ""})
    manifest = Manifest(pd.DataFrame(rows), list(good.classes), list(good.class_names))
    return write_manifest(manifest, tmp_path / "with_bad.tsv")


def test_shards_partition_the_manifest_and_hold_the_raw_fbank(tiny_corpus, tmp_path):
    manifest = read_manifest(tiny_corpus["polyphony"])
    shards = [build_shard(tiny_corpus["polyphony"], tmp_path / f"s{i}.h5", i, 3, TARGET).path for i in range(3)]
    seen = []
    for index, path in enumerate(shards):
        with h5py.File(path, "r") as shard:
            clip_ids = list(shard["clip_id"].asstr()[()])
            assert clip_ids == list(manifest.table["clip_id"].iloc[index::3])     # rows i, i+N, i+2N, ...
            seen += clip_ids
            fbank = shard["fbank"]
            assert fbank.dtype == np.float16 and fbank.chunks == (1, TARGET, 128)
            assert fbank.shape == (len(clip_ids), TARGET, 128)
            assert shard["fold"].dtype == np.int16 and shard["labels"].dtype == np.uint8
            assert shard["extra/polyphony"].dtype == np.int16
            np.testing.assert_array_equal(shard["extra/polyphony"][()], shard["labels"][()].sum(1))
            attrs = shard.attrs
            assert attrs["complete"] and attrs["target_length"] == TARGET
            assert (attrs["shard_index"], attrs["num_shards"]) == (index, 3)
            assert attrs["manifest_hash"] == manifest.content_hash()
            assert json.loads(attrs["classes"]) == manifest.classes and attrs["num_classes"] == manifest.num_classes
            assert json.loads(attrs["front_end"])["num_mel_bins"] == 128
            row = manifest.table.index[manifest.table["clip_id"] == clip_ids[0]][0]
            raw = load_raw_fbank(manifest.audio_path(row))
            assert shard["num_frames"][0] == raw.shape[0]
            torch.testing.assert_close(torch.from_numpy(fbank[0]).float(), fit_length(raw, TARGET), atol=0.02, rtol=2e-3)
            assert sorted(np.flatnonzero(shard["labels"][0])) == sorted(manifest.label_indices(row))
    assert sorted(seen) == sorted(manifest.table["clip_id"])
    assert not list(tmp_path.glob("*.tmp"))


def test_statistics_cover_unpadded_train_frames_only(tiny_corpus, tmp_path):
    manifest = read_manifest(tiny_corpus["poly"])
    long_target = 300          # longer than every clip: padding must not enter the sums
    with h5py.File(build_shard(tiny_corpus["poly"], tmp_path / "s.h5", target_length=long_target).path, "r") as shard:
        attrs = dict(shard.attrs)
    train = [load_raw_fbank(manifest.audio_path(r)).double() for r in range(len(manifest)) if manifest.table.at[r, "split"] == "train"]
    frames = torch.cat(train)
    assert attrs["stat_count"] == frames.numel()
    assert np.isclose(attrs["stat_sum"], frames.sum().item(), rtol=1e-6)
    assert np.isclose(attrs["stat_sumsq"], frames.square().sum().item(), rtol=1e-6)


def test_bad_inputs_are_skipped_and_reported(tiny_corpus, tmp_path):
    manifest_path = bad_input_manifest(tmp_path, tiny_corpus["poly"])
    # min_samples 0: the front end's own checks, not the official short-clip drop, are under test here
    report = build_shard(manifest_path, tmp_path / "shard.h5", target_length=TARGET,
                         config=CacheConfig(max_failure_fraction=0.5), min_samples=0)
    skips = pd.read_csv(report.skips_path, sep="\t", dtype=str, keep_default_na=False)
    assert report.skips_path.name == "shard.skips.tsv"
    assert sorted(skips["clip_id"]) == sorted(["corrupt", "empty", "silent", "nan", "tiny", "missing"])
    reasons = dict(zip(skips["clip_id"], skips["reason"]))
    assert "cannot decode" in reasons["corrupt"] and "empty" in reasons["empty"] and "silent" in reasons["silent"]
    assert "NaN" in reasons["nan"] and "shorter" in reasons["tiny"] and "missing" in reasons["missing"]
    with h5py.File(report.path, "r") as shard:
        clip_ids = list(shard["clip_id"].asstr()[()])
        assert len(clip_ids) == report.written == 8 and shard.attrs["num_skipped"] == 6
        short = clip_ids.index("short_8k")
        assert shard["num_frames"][short] == 23                       # 0.25 s resampled to 16 kHz
        assert not shard["fbank"][short, 23:].any()                   # raw zero padding
        assert shard["num_frames"][clip_ids.index("long_44k")] == 198  # 2 s: truncated to TARGET frames
    assert verify_shard(report.path, read_manifest(manifest_path)) == []


def test_too_many_failures_fail_the_job_and_keep_the_previous_shard(tiny_corpus, tmp_path):
    manifest_path = bad_input_manifest(tmp_path, tiny_corpus["poly"])
    good = build_shard(tiny_corpus["poly"], tmp_path / "shard.h5", target_length=TARGET).path
    before = good.read_bytes()
    with pytest.raises(CacheError, match=r"shard\.skips\.tsv"):
        build_shard(manifest_path, good, target_length=TARGET)          # 6/14 failures > 0.05
    assert good.read_bytes() == before
    assert not list(good.parent.glob("*.tmp"))
    assert verify_shard(good, read_manifest(tiny_corpus["poly"])) == []


def test_a_killed_build_leaves_nothing_that_looks_complete(tiny_corpus, tmp_path, monkeypatch):
    good = build_shard(tiny_corpus["mono"], tmp_path / "shard.h5", target_length=TARGET).path
    before = good.read_bytes()
    calls = {"n": 0}
    real_loader = cache_module.load_raw_fbank

    def dies_midway(path, config, **options):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt     # stands in for SIGKILL / node failure
        return real_loader(path, config, **options)

    monkeypatch.setattr(cache_module, "load_raw_fbank", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        build_shard(tiny_corpus["mono"], good, target_length=TARGET)
    assert good.read_bytes() == before
    # An interrupted build cleans up after itself; a SIGKILL leaves at most a hidden `.shard.h5.*.tmp`.
    assert not list(good.parent.glob("*.tmp"))


def test_verify_finds_damage_and_stale_attributes(tiny_corpus, tmp_path):
    manifest = read_manifest(tiny_corpus["mono"])
    good = build_shard(tiny_corpus["mono"], tmp_path / "good.h5", 0, 2, TARGET).path
    assert verify_shard(good, manifest, FrontEndConfig(), TARGET) == []

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    problems = verify_shard(truncated)
    assert problems and all("truncated" in p or "unreadable" in p for p in problems)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x89HDF\r\n" + b"\x00" * 100)
    assert "not a readable HDF5 file" in verify_shard(garbage)[0]
    assert verify_shard(tmp_path / "absent.h5") == ["file not found"]

    unfinished = shutil.copy(good, tmp_path / "unfinished.h5")
    with h5py.File(unfinished, "r+") as shard:
        del shard.attrs["complete"]
    assert "complete" in verify_shard(unfinished)[0]

    uneven = shutil.copy(good, tmp_path / "uneven.h5")
    with h5py.File(uneven, "r+") as shard:
        del shard["fold"]
        shard.create_dataset("fold", data=np.zeros(3, np.int16))
    assert any("row counts differ" in p for p in verify_shard(uneven))

    problems = verify_shard(good, manifest, FrontEndConfig(num_mel_bins=64), TARGET + 1)
    assert any("front_end.num_mel_bins" in p for p in problems) and any("target_length" in p for p in problems)
    assert any("mel bins" in p for p in problems)

    grown = Manifest(pd.concat([manifest.table, manifest.table.iloc[:2].assign(clip_id=["x1", "x2"])]),
                     manifest.classes, manifest.class_names, manifest.root)
    problems = verify_shard(good, grown)
    assert any("manifest hash" in p for p in problems) and any("manifest rows for this shard" in p for p in problems)
    fewer_classes = Manifest(manifest.table.assign(labels=""), manifest.classes[:3], manifest.class_names[:3], manifest.root)
    assert any("class list" in p for p in verify_shard(good, fewer_classes))


def test_cli_build_and_verify(tiny_corpus, tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"front_end": {"num_mel_bins": 64}, "cache": {"max_failure_fraction": 0.0}}))
    shard = tmp_path / "cache" / "shard-000-of-002.h5"
    args = ["cache", "build", "--manifest", str(tiny_corpus["poly"]), "--out", str(shard), "--shard", "0",
            "--num-shards", "2", "--target-length", str(TARGET), "--config", str(config)]
    assert main(args) == 0
    with h5py.File(shard, "r") as handle:
        assert handle["fbank"].shape[1:] == (TARGET, 64)
    verify = ["cache", "verify", str(shard), "--manifest", str(tiny_corpus["poly"]), "--config", str(config),
              "--target-length", str(TARGET)]
    assert main(verify) == 0
    assert main(verify[:-1] + [str(TARGET * 2)]) == 1
    assert "target_length" in capsys.readouterr().out
    config.write_text(yaml.safe_dump({"cache": {"max_failure_fraction": 2.0}}))
    assert main(args) == 1
    assert "cache.max_failure_fraction" in capsys.readouterr().err
    assert main(args[:2] + ["--manifest", str(tmp_path / "none.tsv"), "--out", str(shard), "--target-length", "10"]) == 1


def test_verify_reads_the_data_not_only_the_header(tiny_corpus, tmp_path):
    """A damaged chunk inside an otherwise intact file (gzip makes damage detectable) is reported."""
    shard = build_shard(tiny_corpus["mono"], tmp_path / "gz.h5", 0, 4, TARGET, config=CacheConfig(compression="gzip")).path
    with h5py.File(shard, "r") as handle:
        last = handle["fbank"].id.get_chunk_info(handle["fbank"].id.get_num_chunks() - 1)
    with open(shard, "r+b") as raw:
        raw.seek(last.byte_offset)
        raw.write(b"\xff" * last.size)
    problems = verify_shard(shard)
    assert len(problems) == 1 and problems[0].startswith("unreadable data")


def test_verify_checks_that_shards_belong_together(tiny_corpus, tmp_path, capsys):
    first, second = (build_shard(tiny_corpus["mono"], tmp_path / f"s{i}.h5", i, 2, TARGET).path for i in range(2))
    assert verify_shard_set([first, second]) == []
    other_length = build_shard(tiny_corpus["mono"], tmp_path / "other.h5", 1, 2, TARGET + 16).path
    copy = shutil.copy(first, tmp_path / "copy.h5")
    problems = verify_shard_set([first, other_length, copy])
    assert len(problems) == 2 and "other settings" in problems[0] and "shard index 0 also in" in problems[1]
    assert main(["cache", "verify", str(first), str(copy)]) == 1
    assert "also in" in capsys.readouterr().out


def test_verify_reports_a_shard_missing_from_the_set(tiny_corpus, tmp_path):
    shards = [build_shard(tiny_corpus["mono"], tmp_path / f"s{i}.h5", i, 3, TARGET).path for i in range(3)]
    assert verify_shard_set(shards) == []
    assert verify_shard_set([shards[0], shards[2]]) == ["shard set incomplete: index(es) [1] of 3 not among the files given"]
    assert verify_shard_set([shards[1]]) == []  # one shard on its own is checked alone


def test_a_build_writes_progress_lines_without_a_terminal(tiny_corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSLAM_PROGRESS_SECONDS", "0")
    build_shard(tiny_corpus["mono"], tmp_path / "shard.h5", target_length=TARGET)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[cache shard.h5]")]
    total = len(read_manifest(tiny_corpus["mono"]))
    assert lines[0].startswith(f"[cache shard.h5] clip 1/{total}") and f"clip {total}/{total}" in lines[-1]
    assert all("clips/s" in line and "ETA" in line and "skipped" in line for line in lines)


def test_clips_below_the_official_min_samples_are_dropped_not_failed(tmp_path):
    """The official loader drops clips with fewer than 10,000 samples (min_sample_size); so does every cache,
    whatever the adapter: 9,999 samples at 16 kHz (or the same length at 32 kHz) go, 10,000 stay."""
    import soundfile

    from sslam.data.manifest import Manifest, write_manifest

    rng = np.random.default_rng(0)
    lengths = {"short": (9_999, 16_000), "enough": (10_000, 16_000), "short32k": (19_998, 32_000), "long": (16_000, 16_000)}
    rows = []
    for name, (samples, rate) in lengths.items():
        soundfile.write(tmp_path / f"{name}.wav", 0.1 * rng.standard_normal(samples), rate)
        rows.append({"clip_id": name, "path": str(tmp_path / f"{name}.wav"), "split": "train", "labels": ""})
    manifest = tmp_path / "m.tsv"
    write_manifest(Manifest(pd.DataFrame(rows), []), manifest)
    report = build_shard(manifest, tmp_path / "s.h5", target_length=TARGET)   # default: the official drop
    assert (report.written, report.short) == (2, 2)
    skips = pd.read_csv(report.skips_path, sep="\t")
    assert sorted(skips.clip_id) == ["short", "short32k"] and skips.reason.str.startswith("short:").all()
    with h5py.File(report.path, "r") as shard:
        assert sorted(shard["clip_id"].asstr()[()]) == ["enough", "long"] and shard.attrs["min_samples"] == 10_000
    assert build_shard(manifest, tmp_path / "all.h5", target_length=TARGET, min_samples=0).written == 4
