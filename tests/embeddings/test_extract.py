"""`sslam extract`: granularities equal to the official extractor, folders and file lists with same-named
files, resuming, HDF5 output, DataLoader workers, the checkpoint's own input settings, one-line errors."""
import json
import os

import h5py
import numpy as np
import pytest
import soundfile
import torch

from embed_helpers import TRAINED_INPUT, tiny_encoder, write_project_checkpoint
from sslam.audio.front_end import fit_length, load_raw_fbank, normalise
from sslam.cli import main as cli_main
from sslam.audio.config import AUDIOSET_MEAN, AUDIOSET_STD, FrontEndConfig
from sslam.model.checkpoints.read import load_encoder

WINDOW = TRAINED_INPUT["target_length"]  # 192 frames = 12 time patches: what the checkpoint records


@pytest.fixture
def checkpoint(tmp_path):
    return write_project_checkpoint(tmp_path / "tiny.pt", tiny_encoder())


def write(path, seconds=0.5, rate=16000, channels=1, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (int(seconds * rate), channels) if channels > 1 else int(seconds * rate)
    soundfile.write(path, 0.1 * np.random.default_rng(seed).standard_normal(shape).astype(np.float32), rate)
    return path


@pytest.fixture
def clips(tmp_path):
    folder = tmp_path / "audio"
    write(folder / "short.wav")
    write(folder / "long_stereo.wav", seconds=3.0, rate=22050, channels=2, seed=1)
    soundfile.write(folder / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    return folder


def official(checkpoint, path, num_mel_bins):
    """EAT's feature_extract.py with the checkpoint's statistics: pad/cut to the target, normalise, encode."""
    raw = load_raw_fbank(path, FrontEndConfig(num_mel_bins=num_mel_bins))
    fbank = normalise(fit_length(raw, WINDOW), TRAINED_INPUT["norm_mean"], TRAINED_INPUT["norm_std"])
    with torch.no_grad():
        return load_encoder(checkpoint)(fbank[None])[0].numpy()


@pytest.mark.parametrize("granularity", ["all", "frame", "utterance"])
def test_granularities_equal_the_official_extractor(tmp_path, checkpoint, clips, granularity):
    out = tmp_path / "features"
    code = cli_main(["extract", str(checkpoint), str(clips), "--out", str(out), "--granularity", granularity,
                     "--long-audio", "truncate", "--num-workers", "0"])
    assert code == 0
    config = load_encoder(checkpoint).config
    for stem in ["short", "long_stereo"]:
        reference = official(checkpoint, clips / f"{stem}.wav", config.num_mel_bins)
        reference = {"all": reference, "frame": reference[1:], "utterance": reference[0]}[granularity]
        np.testing.assert_allclose(np.load(out / f"{stem}.npy"), reference, rtol=1e-4, atol=1e-5)
    index = json.loads((out / "extract_index.json").read_text())["files"]
    assert "silent audio" in index["silent.wav"]["skipped"] and not (out / "silent.npy").exists()
    # 0.5 s = 48 frames -> 3 real time patches; 3 s is cut to the 12 patches of the window, and says so
    assert index["short.wav"]["real_time_patches"] == 3 and not index["short.wav"]["truncated"]
    assert index["long_stereo.wav"]["real_time_patches"] == WINDOW // config.patch_size
    assert index["long_stereo.wav"]["truncated"]


def test_long_clips_are_embedded_whole_by_default(tmp_path, checkpoint, clips, capsys):
    out = tmp_path / "features"
    assert cli_main(["extract", str(checkpoint), str(clips / "long_stereo.wav"), "--out", str(out),
                     "--granularity", "timestamp", "--num-workers", "0"]) == 0
    entry = json.loads((out / "extract_index.json").read_text())["files"]["long_stereo.wav"]
    assert entry["num_windows"] == 2 and not entry["truncated"]
    assert np.load(out / "long_stereo.npy").shape == (entry["real_time_patches"], 48)
    assert entry["real_time_patches"] == -(-entry["num_frames"] // 16)  # every frame of the 3 s
    assert "truncat" not in capsys.readouterr().err
    assert cli_main(["extract", str(checkpoint), str(clips / "long_stereo.wav"), "--out", str(tmp_path / "t"),
                     "--long-audio", "truncate", "--num-workers", "0"]) == 0
    assert "only its start is embedded" in capsys.readouterr().err


def test_folders_lists_and_same_named_files(tmp_path, checkpoint, capsys):
    root = tmp_path / "speech_commands"
    for word in ("yes", "no"):
        write(root / word / "0a2b.wav", seed=len(word))
    write(root / "no" / "nested" / "deep.flac", seed=5)
    (root / "notes.txt").write_text("not audio")
    out = tmp_path / "features"
    previous = os.getcwd()
    os.chdir(root)
    try:  # "." as the folder: never "missing audio file: ."
        assert cli_main(["extract", str(checkpoint), ".", "--out", str(out), "--num-workers", "0"]) == 0
    finally:
        os.chdir(previous)
    assert "missing audio file" not in capsys.readouterr().err
    files = json.loads((out / "extract_index.json").read_text())["files"]
    assert sorted(files) == ["no/0a2b.wav", "no/nested/deep.flac", "yes/0a2b.wav"]
    assert not np.allclose(np.load(out / "yes" / "0a2b.npy"), np.load(out / "no" / "0a2b.npy"))
    listing = tmp_path / "list.txt"
    listing.write_text("# clips\nspeech_commands/yes/0a2b.wav\nspeech_commands/missing.wav\n")
    listed = tmp_path / "listed"
    assert cli_main(["extract", str(checkpoint), "--files-from", str(listing), "--out", str(listed),
                     "--num-workers", "0"]) == 0
    files = json.loads((listed / "extract_index.json").read_text())["files"]
    assert "features" in files["speech_commands/yes/0a2b.wav"]
    assert "missing audio file" in files["speech_commands/missing.wav"]["skipped"]
    write(root / "yes" / "0a2b.flac")
    capsys.readouterr()
    assert cli_main(["extract", str(checkpoint), str(root), "--out", str(tmp_path / "x")]) == 1
    assert "yes/0a2b.flac and yes/0a2b.wav" in capsys.readouterr().err


def test_rerun_skips_done_files_and_refuses_other_settings(tmp_path, checkpoint, clips, capsys):
    out = tmp_path / "features"
    arguments = ["extract", str(checkpoint), str(clips), "--out", str(out), "--num-workers", "0"]
    assert cli_main(arguments) == 0
    written = (out / "short.npy").stat().st_mtime_ns
    write(clips / "new.wav", seed=9)
    capsys.readouterr()
    assert cli_main(arguments) == 0
    assert "2 of 4 file(s) already extracted" in capsys.readouterr().out
    assert (out / "short.npy").stat().st_mtime_ns == written and (out / "new.npy").is_file()
    assert cli_main(arguments + ["--granularity", "frame"]) == 1
    assert "other settings (granularity 'all' -> 'frame')" in capsys.readouterr().err
    assert cli_main(arguments + ["--granularity", "frame", "--overwrite"]) == 0
    assert np.load(out / "short.npy").ndim == 2


def test_hdf5_output_keyed_by_path_and_resumed(tmp_path, checkpoint, clips, capsys):
    write(clips / "sub" / "short.wav", seed=3)
    target = tmp_path / "features.h5"
    arguments = ["extract", str(checkpoint), str(clips), "--out", str(target), "--format", "hdf5",
                 "--granularity", "utterance", "--num-workers", "0"]
    assert cli_main(arguments) == 0
    with h5py.File(target) as store:
        assert store["short.wav"].shape == store["sub/short.wav"].shape == (48,)
        assert store["sub/short.wav"].attrs["complete"] and store["short.wav"].attrs["num_frames"] == 48
        assert "silent.wav" in json.loads(store.attrs["skipped"])
        first = store["short.wav"][()]
    capsys.readouterr()
    assert cli_main(arguments) == 0
    assert "3 of 4 file(s) already extracted" in capsys.readouterr().out
    with h5py.File(target) as store:
        np.testing.assert_array_equal(store["short.wav"][()], first)
        np.testing.assert_allclose(first, official(checkpoint, clips / "short.wav", 64)[0], atol=1e-5)


def test_decoding_workers_give_the_same_features(tmp_path, checkpoint, clips):
    outputs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        assert cli_main(["extract", str(checkpoint), str(clips), "--out", str(out), "--num-workers", str(workers),
                         "--batch-size", "2"]) == 0
        outputs[workers] = {name: np.load(out / name) for name in ("short.npy", "long_stereo.npy")}
    for name in outputs[0]:
        np.testing.assert_allclose(outputs[0][name], outputs[2][name], atol=1e-6)


def test_the_checkpoints_statistics_are_used_unless_overridden(tmp_path, checkpoint, clips):
    short = clips / "short.wav"
    stored, given = tmp_path / "stored", tmp_path / "given"
    assert cli_main(["extract", str(checkpoint), str(short), "--out", str(stored), "--num-workers", "0"]) == 0
    assert cli_main(["extract", str(checkpoint), str(short), "--out", str(given), "--num-workers", "0",
                     "--norm-mean", str(AUDIOSET_MEAN), "--norm-std", str(AUDIOSET_STD)]) == 0
    settings = json.loads((stored / "extract_index.json").read_text())["settings"]
    assert (settings["norm_mean"], settings["norm_std"], settings["window"]) == (-3.5, 3.0, WINDOW)
    np.testing.assert_allclose(np.load(stored / "short.npy"), official(checkpoint, short, 64), atol=1e-5)
    assert not np.allclose(np.load(given / "short.npy"), np.load(stored / "short.npy"), atol=1e-3)


def test_one_line_errors(tmp_path, checkpoint, clips, capsys):
    short = str(clips / "short.wav")
    cases = [
        ([short, "--target-length", "100"], "multiple of the patch size"),
        ([short, str(tmp_path / "nowhere")], "no such file or folder"),
        ([str(tmp_path / "empty")], "no audio files"),
        ([], "no inputs"),
    ]
    (tmp_path / "empty").mkdir()
    if not torch.cuda.is_available():
        cases.append(([short, "--device", "cuda"], "CUDA requested but unavailable"))
    for arguments, message in cases:
        capsys.readouterr()
        code = cli_main(["extract", str(checkpoint), *arguments, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and message in err[0], err


def test_a_file_the_resampler_cannot_hold_is_skipped_and_the_batch_is_written(tmp_path, checkpoint, monkeypatch, capsys):
    """Issue 18.1: any per-file failure of the front end, the resampler's memory error included, is an AudioError
    that extraction records as a skip; the other files of the same batch are written."""
    import torchaudio

    real_resample = torchaudio.functional.resample

    def short_of_memory(waveform, orig, new, *args, **kwargs):
        if orig == 44100:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 12800000000 bytes.")
        return real_resample(waveform, orig, new, *args, **kwargs)

    monkeypatch.setattr(torchaudio.functional, "resample", short_of_memory)
    folder = tmp_path / "audio"
    for i in range(8):
        write(folder / f"good{i}.wav", rate=22050, seed=i)
    write(folder / "prime.wav", rate=48017, seed=8)       # soxr's, at any memory
    write(folder / "greedy.wav", rate=44100, seed=9)
    out = tmp_path / "features"
    assert cli_main(["extract", str(checkpoint), str(folder), "--out", str(out), "--num-workers", "0",
                     "--batch-size", "16"]) == 0
    index = json.loads((out / "extract_index.json").read_text())["files"]
    assert sorted(p.stem for p in out.glob("*.npy")) == sorted([f"good{i}" for i in range(8)] + ["prime"])
    assert "cannot resample 44100 Hz to 16000 Hz" in index["greedy.wav"]["skipped"]
    assert "skipped" in capsys.readouterr().err


def test_progress_counts_windows_inside_a_long_file(tmp_path, checkpoint, monkeypatch, capsys):
    long_file = write(tmp_path / "long" / "long.wav", seconds=60.0)
    monkeypatch.setenv("SSLAM_PROGRESS_SECONDS", "0")  # a line after every batch of windows
    out = tmp_path / "features"
    assert cli_main(["extract", str(checkpoint), str(long_file), "--out", str(out), "--num-workers", "0",
                     "--batch-size", "4", "--granularity", "cls"]) == 0
    windows = json.loads((out / "extract_index.json").read_text())["files"]["long.wav"]["num_windows"]
    assert windows > 20  # 60 s in windows of 1.92 s
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[extract] window ")]
    counted = [tuple(map(int, line.split()[2].split("/"))) for line in lines]
    # the total is known from the header before anything is decoded, and the count moves inside the file
    assert {total for _, total in counted} == {windows}
    done = [d for d, _ in counted]
    assert done[0] == 4 and done == sorted(done) and done[-1] == windows and len(set(done)) > 5
    assert all("ETA" in line for line in lines)


def test_every_soundfile_format_is_read_and_what_is_left_out_is_said(tmp_path, checkpoint, capsys):
    folder = tmp_path / "audio"
    write(folder / "a.wav")
    soundfile.write(folder / "b.oga", 0.1 * np.random.default_rng(2).standard_normal(8000), 16000, format="OGG")
    (folder / "notes.txt").write_text("not audio")
    (folder / "labels.csv").write_text("a,b")
    out = tmp_path / "features"
    assert cli_main(["extract", str(checkpoint), str(folder), "--out", str(out), "--num-workers", "0"]) == 0
    files = json.loads((out / "extract_index.json").read_text())["files"]
    assert sorted(files) == ["a.wav", "b.oga"] and "features" in files["b.oga"]
    err = capsys.readouterr().err
    assert "left out 2 file(s) under the input folders: 1 .csv, 1 .txt" in err or \
        "left out 2 file(s) under the input folders: 1 .txt, 1 .csv" in err, err


def test_folder_links_are_followed_and_loops_are_not(tmp_path, checkpoint, capsys):
    data = tmp_path / "data"
    write(data / "own" / "a.wav")
    elsewhere = write(tmp_path / "elsewhere" / "speakers" / "b.wav", seed=1).parent
    (data / "linked").symlink_to(elsewhere, target_is_directory=True)
    (data / "own" / "loop").symlink_to(data, target_is_directory=True)  # would recurse for ever
    out = tmp_path / "features"
    assert cli_main(["extract", str(checkpoint), str(data), "--out", str(out), "--num-workers", "0"]) == 0
    files = json.loads((out / "extract_index.json").read_text())["files"]
    assert sorted(files) == ["linked/b.wav", "own/a.wav"]  # keys keep the link's name
    assert "1 (folder link loop)" in capsys.readouterr().err


def test_output_and_root_mistakes_are_one_line_before_any_work(tmp_path, checkpoint, clips, capsys):
    short = str(clips / "short.wav")
    # --out feats.h5 without --format is an HDF5 file, not a folder of .npy files called feats.h5
    assert cli_main(["extract", str(checkpoint), short, "--out", str(tmp_path / "feats.h5"), "--num-workers", "0"]) == 0
    assert (tmp_path / "feats.h5").is_file() and h5py.is_hdf5(tmp_path / "feats.h5")
    (tmp_path / "folder").mkdir()
    cases = [
        (["--out", str(tmp_path / "x.h5"), "--format", "npy"], "--format npy writes a folder"),
        (["--out", str(tmp_path / "o"), "--root", short], "--root must be a folder"),
        (["--out", str(tmp_path / "o"), "--format", "hdf5", "--root", str(tmp_path / "none")], "does not exist"),
        (["--out", str(tmp_path / "folder"), "--format", "hdf5"], "is a folder; HDF5 output is one file"),
    ]
    for arguments, message in cases:
        capsys.readouterr()
        assert cli_main(["extract", str(checkpoint), short, *arguments]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "o").exists()


def test_a_locked_hdf5_output_says_what_helps(tmp_path, checkpoint, clips, capsys):
    import subprocess
    import sys
    import time

    target = tmp_path / "features.h5"
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time\nf = h5py.File(sys.argv[1], 'a')\n"
                               "print('open', flush=True)\ntime.sleep(60)", str(target)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        for extra in ([], ["--overwrite"]):
            capsys.readouterr()
            started = time.monotonic()
            code = cli_main(["extract", str(checkpoint), str(clips / "short.wav"), "--out", str(target), *extra])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 1 and time.monotonic() - started < 30
            assert len(err) == 1 and "open in another process" in err[0] and "--overwrite cannot help" in err[0], err
    finally:
        holder.kill()
        holder.wait()
