"""A 0-byte manifest, a missing class list and a full disk each get one clear line (issue 10.6)."""
import errno
import os
import re
import subprocess

import pandas as pd
import pytest

import sslam.runtime.io
from sslam.cli import main
from sslam.data.cache import build_shard
from sslam.data.manifest import classes_path, read_manifest, write_manifest
from sslam.runtime.errors import DiskFullError, ManifestError, OutputPathError
from sslam.runtime.io import atomic_write_json

TARGET = 112


PROGRESS_LINE = re.compile(r"^\[[^\]]+\] .* \| elapsed \S+ \| ETA \S+$")


def one_error_line(capsys, command):
    """The stderr besides the cache build's own progress lines is exactly one error line."""
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith(f"sslam {command}: error:"), lines
    return lines[0]


def test_a_zero_byte_manifest_is_one_line(tmp_path, capsys):
    empty = tmp_path / "manifest.tsv"
    empty.write_bytes(b"")
    with pytest.raises(ManifestError, match="empty file"):
        read_manifest(empty)
    assert main(["cache", "build", "--manifest", str(empty), "--out", str(tmp_path / "s.h5"),
                 "--target-length", str(TARGET)]) == 1
    assert "empty file (0 bytes)" in one_error_line(capsys, "cache")


def test_a_missing_class_list_is_named(tiny_corpus, tmp_path, capsys):
    manifest = read_manifest(tiny_corpus["poly"])
    path = write_manifest(manifest, tmp_path / "poly.tsv")
    classes_path(path).unlink()
    with pytest.raises(ManifestError, match=r"class list .*poly\.classes\.tsv is missing"):
        read_manifest(path)
    assert main(["cache", "verify", str(tmp_path / "x.h5"), "--manifest", str(path)]) == 1
    err = one_error_line(capsys, "cache")
    assert "unknown label id" not in err and "is missing" in err


def test_an_unlabelled_manifest_needs_no_class_list(tiny_corpus, tmp_path):
    manifest = read_manifest(tiny_corpus["pretrain"])
    path = write_manifest(manifest, tmp_path / "pretrain.tsv")
    classes_path(path).unlink()
    assert len(read_manifest(path)) == len(manifest)


@pytest.mark.parametrize("content, match", [
    (b"index\tlabel_id\n0\ta\n", "without column"), (b"index\tlabel_id\tname\nx\ta\tA\n", "not an integer"),
    (b"index\tlabel_id\tname\n0\ta\tA\n0\tb\tB\n", "each once"), (b"", "malformed class list"),
])
def test_a_malformed_class_list_is_one_line(tiny_corpus, tmp_path, content, match):
    path = write_manifest(read_manifest(tiny_corpus["poly"]), tmp_path / "poly.tsv")
    classes_path(path).write_bytes(content)
    with pytest.raises(ManifestError, match=match):
        read_manifest(path)


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_a_manifest_keeps_the_old_one(tiny_corpus, tmp_path, monkeypatch):
    manifest = read_manifest(tiny_corpus["poly"])
    path = write_manifest(manifest, tmp_path / "poly.tsv")
    before = path.read_bytes()
    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    with pytest.raises(DiskFullError, match=r"no space left .* while writing .*poly\.classes\.tsv; the previous"):
        write_manifest(manifest, path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_while_writing_a_shard_is_one_line(tiny_corpus, tmp_path, monkeypatch, capsys):
    shard = build_shard(tiny_corpus["mono"], tmp_path / "shard.h5", target_length=TARGET).path
    before = shard.read_bytes()
    monkeypatch.setattr(sslam.runtime.io, "_fsync_file", disk_full)   # where a delayed ENOSPC surfaces (NFS, quotas)
    assert main(["cache", "build", "--manifest", str(tiny_corpus["mono"]), "--out", str(shard),
                 "--target-length", str(TARGET)]) == 1
    assert "no space left on the device" in one_error_line(capsys, "cache")
    assert shard.read_bytes() == before


def test_a_full_disk_while_writing_metrics_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sslam.runtime.io, "_fsync_file", disk_full)
    with pytest.raises(DiskFullError, match=r"metrics\.json; nothing was written"):
        atomic_write_json(tmp_path / "metrics.json", {"value": 1.0})
    assert not (tmp_path / "metrics.json").exists()


def test_an_output_where_no_folder_can_be_made_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputPathError, match=r"cannot write .*a-file/out/metrics\.json"):
        atomic_write_json(blocker / "out" / "metrics.json", {"value": 1.0})
    assert main(["track", "init", "--uri", "sqlite:///mlflow.db", "--experiment", "e", "--study", "s",
                 "--out", str(blocker / "tracking.json")]) == 1
    assert "cannot write" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_a_really_full_filesystem_is_one_line(tiny_corpus, tmp_path, capsys):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        code = main(["cache", "build", "--manifest", str(tiny_corpus["mono"]), "--out", str(mount / "shard.h5"),
                     "--target-length", str(TARGET)])
        assert code == 1 and "no space left on the device" in one_error_line(capsys, "cache")
        assert not list(mount.iterdir())
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_manifest_cells_of_the_wrong_type_are_one_line(tmp_path):
    path = tmp_path / "m.tsv"
    pd.DataFrame({"clip_id": ["a"], "path": ["a.wav"], "fold": ["first"]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(ManifestError, match="malformed manifest"):
        read_manifest(path)


# --- odd sample rates (issue 18.1) ---------------------------------------------------------------------------
def test_odd_sample_rates_cache_in_bounded_memory(tmp_path):
    """9 good clips + a 19-kB WAV at 48,017 Hz (a prime) + one at 767,999 Hz: torchaudio's kernel for them would
    take 6 and 98 GB; under a 1-GiB address-space budget the build caches all 11 clips."""
    from bombs import odd_rate_manifest
    from capped import cli_body, run_capped

    manifest = odd_rate_manifest(tmp_path / "audio", odd_rates=(48017, 767999))
    shard = tmp_path / "shard.h5"
    run = run_capped(cli_body("cache", "build", "--manifest", manifest, "--out", shard, "--target-length", 64,
                              "--min-samples", 0),
                     preamble="import sslam.data.cache, sslam.cli")
    assert run.returncode == 0, run.describe()
    assert "11 clips cached, 0 skipped" in run.stdout, run.describe()
    assert run.growth < 2**30, run.describe()


def test_a_clip_the_resampler_cannot_hold_is_a_recorded_skip(tmp_path, monkeypatch, capsys):
    """Whatever the resampler raises for one file (here torch's out-of-memory error) costs that file only."""
    import torchaudio

    from bombs import tone_file

    real_resample = torchaudio.functional.resample

    def short_of_memory(waveform, orig, new, *args, **kwargs):
        if orig == 44100:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3075520000 bytes.")
        return real_resample(waveform, orig, new, *args, **kwargs)

    monkeypatch.setattr(torchaudio.functional, "resample", short_of_memory)
    paths = [tone_file(tmp_path / f"good{i}.wav", 22050, 0.5, 300.0 * (i + 1)) for i in range(9)]
    paths.append(tone_file(tmp_path / "greedy.wav", 44100, 0.5))
    manifest = write_manifest_of(paths, tmp_path / "manifest.tsv")
    assert main(["cache", "build", "--manifest", str(manifest), "--out", str(tmp_path / "s.h5"), "--target-length",
                 "64", "--max-failure-fraction", "0.2", "--min-samples", "0"]) == 0
    skips = pd.read_csv(tmp_path / "s.skips.tsv", sep="\t")
    assert skips.clip_id.tolist() == ["greedy"]
    assert "cannot resample 44100 Hz to 16000 Hz" in skips.reason[0] and "allocate memory" in skips.reason[0]
    assert "9 clips cached, 1 skipped" in capsys.readouterr().out


def write_manifest_of(paths, target):
    from sslam.data.manifest import Manifest

    table = pd.DataFrame({"clip_id": [p.stem for p in paths], "path": [str(p) for p in paths],
                          "split": ["unlabeled"] * len(paths)})
    write_manifest(Manifest(table), target)
    return target


# --- a folder, a binary file or broken YAML where a file is expected (issue 18.8) ------------------------------
@pytest.fixture
def odd_inputs(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "binary.yaml").write_bytes(b"\x00\xff\xfe\x89PNG binary")
    (tmp_path / "broken.yaml").write_text("study: [\n")
    (tmp_path / "ok.yaml").write_text("study: {name: t}\n")
    return tmp_path


@pytest.mark.parametrize("command, arguments, words", [
    ("plan", ["--config", "folder"], "config file folder is a folder, not a file"),
    ("tables", ["--config", "folder", "--metrics", "m.json", "--out", "t"], "config file folder is a folder"),
    ("cache", ["build", "--manifest", "m.tsv", "--out", "s.h5", "--target-length", "8", "--config", "folder"],
     "config file folder is a folder"),
    ("plan", ["--config", "binary.yaml"], "binary.yaml: not a text file (byte 1 is not UTF-8)"),
    ("plan", ["--config", "broken.yaml"], "broken.yaml is not valid YAML (line 2, column 1): while parsing"),
    ("cache", ["build", "--manifest", "folder", "--out", "s.h5", "--target-length", "8"], "manifest folder is a folder"),
    ("tables", ["--config", "ok.yaml", "--metrics", "folder", "--out", "t"], "metrics file folder is a folder"),
    ("tables", ["--config", "ok.yaml", "--metrics", "binary.yaml", "--out", "t"], "not a text file"),
    ("tables", ["--config", "ok.yaml", "--metrics", "m.json", "--out", "ok.yaml"], "a file of that name is in the way"),
    ("polyphony", ["--ontology", "binary.yaml", "--segments", "binary.yaml", "--out", "p.json"], "not a text file"),
])
def test_a_folder_or_binary_file_where_a_file_is_expected_is_one_line(odd_inputs, capsys, monkeypatch, command,
                                                                      arguments, words):
    monkeypatch.chdir(odd_inputs)
    (odd_inputs / "m.json").write_text('{"benchmark": "b", "regime": "linear", "variant": "SSLAM", "seed": 0, '
                                       '"metric": "map", "value": 0.5}')
    assert main([command, *arguments]) == 1
    assert words in one_error_line(capsys, command)


def test_a_shard_written_where_a_folder_is_is_one_line(tiny_corpus, tmp_path, capsys):
    (tmp_path / "shard.h5").mkdir()
    assert main(["cache", "build", "--manifest", str(tiny_corpus["mono"]), "--out", str(tmp_path / "shard.h5"),
                 "--target-length", str(TARGET)]) == 1
    assert "it is a folder" in one_error_line(capsys, "cache")
