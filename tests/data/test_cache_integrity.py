"""Cache integrity end to end (issue 10.3): per-clip checksums, a verify that reads every chunk, NaN/inf and
manifest rows, and jobs that refuse shards built with other settings than their config."""
import json
import shutil

import h5py
import numpy as np
import pytest
import yaml

from sslam.cli import main
from sslam.data.cache import build_shard
from sslam.data.datasets import FbankDataset
from sslam.data.manifest import Manifest, read_manifest
from sslam.data.shards import check_shard_settings, verify_shard
from sslam.runtime.errors import CacheError
from sslam.audio.config import FrontEndConfig

TARGET = 112
SHARDS = 8


@pytest.fixture(scope="module")
def eight_shards(tiny_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("eight")
    return [build_shard(tiny_corpus["mono"], folder / f"shard-{i:03d}-of-{SHARDS:03d}.h5", i, SHARDS, TARGET).path
            for i in range(SHARDS)]


def copy_shards(shards, folder):
    folder.mkdir()
    return [shutil.copy(shard, folder / shard.name) for shard in shards]


def flip_bytes_inside_chunk(path, row):
    """Invert 8 bytes in the middle of the stored chunk of clip `row` (one chunk = one clip)."""
    with h5py.File(path, "r") as shard:
        chunk = shard["fbank"].id.get_chunk_info(row)
    with open(path, "r+b") as raw:
        raw.seek(chunk.byte_offset + chunk.size // 2)
        original = raw.read(8)
        raw.seek(chunk.byte_offset + chunk.size // 2)
        raw.write(bytes(255 - b for b in original))


def test_flipped_bytes_in_every_one_of_eight_shards_are_detected(eight_shards, tmp_path, capsys):
    shards = copy_shards(eight_shards, tmp_path / "damaged")
    for shard in shards:
        flip_bytes_inside_chunk(shard, row=1)            # a middle clip: neither the first nor the last chunk
    for shard in shards:
        problems = verify_shard(shard)
        assert len(problems) == 1 and "fail their checksum" in problems[0] and "rows 1 (" in problems[0], problems
        assert verify_shard(shard, quick=True) == []     # the old first/last-chunk check cannot see it
    assert main(["cache", "verify", *map(str, shards)]) == 1
    out = capsys.readouterr().out
    assert out.count(": BAD") == SHARDS
    assert main(["cache", "verify", "--quick", *map(str, shards)]) == 0


def test_a_damaged_clip_is_one_clear_error_when_training_reads_it(eight_shards, tmp_path):
    (shard,) = copy_shards(eight_shards[:1], tmp_path / "one")
    flip_bytes_inside_chunk(shard, row=1)
    dataset = FbankDataset([shard], 0.0, 1.0, labelled=False)
    dataset[0]
    with pytest.raises(CacheError, match=r"row 1\) is unreadable \(checksum failure"):
        dataset[1]


def test_nan_and_inf_values_are_reported_with_their_rows(eight_shards, tmp_path):
    (shard,) = copy_shards(eight_shards[:1], tmp_path / "nan")
    with h5py.File(shard, "r+") as handle:       # written through HDF5: the checksums stay valid
        handle["fbank"][2, 5, 7] = np.nan
        handle["fbank"][0, 0, 0] = np.inf
        clip = handle["clip_id"].asstr()[2]
    problems = verify_shard(shard)
    assert problems == [f"NaN/inf values in 2 clip(s), rows 0 ({handle_clip(shard, 0)}), 2 ({clip})"]


def handle_clip(path, row):
    with h5py.File(path, "r") as handle:
        return handle["clip_id"].asstr()[row]


def test_rows_that_no_longer_match_their_manifest_are_named(tiny_corpus, eight_shards, tmp_path):
    manifest = read_manifest(tiny_corpus["mono"])
    assert verify_shard(eight_shards[0], manifest) == []
    table = manifest.table.copy()
    with h5py.File(eight_shards[0], "r") as handle:
        first_clip = handle["clip_id"].asstr()[0]
    row = int(np.flatnonzero(table["clip_id"] == first_clip)[0])
    other_label = next(c for c in manifest.classes if c != table.at[row, "labels"])
    table.at[row, "labels"] = other_label
    problems = verify_shard(eight_shards[0], Manifest(table, manifest.classes, manifest.class_names, manifest.root))
    mismatch = [p for p in problems if "no longer match" in p]
    assert len(mismatch) == 1 and f"row 0 ({first_clip}): labels" in mismatch[0] and other_label in mismatch[0]
    # A reordered manifest moves clips to other shards: named too.
    reordered = Manifest(manifest.table.iloc[::-1].reset_index(drop=True), manifest.classes, manifest.class_names)
    assert any("the manifest puts it in shard" in p for p in verify_shard(eight_shards[0], reordered))


def test_a_shard_built_without_checksums_is_reported(tiny_corpus, eight_shards, tmp_path):
    (shard,) = copy_shards(eight_shards[:1], tmp_path / "old")
    with h5py.File(shard, "r+") as handle:
        data = handle["fbank"][()]
        del handle["fbank"]
        handle.create_dataset("fbank", data=data, chunks=(1, *data.shape[1:]))
    assert any("no per-clip checksums" in p for p in verify_shard(shard))


# ---------------------------------------------------------------------------------------- settings checks
def test_settings_check_names_the_attribute_that_differs(eight_shards):
    check_shard_settings(eight_shards, FrontEndConfig(), TARGET, SHARDS)
    with pytest.raises(CacheError, match=r"front_end\.frame_shift_ms is 10\.0 in the shard but 12\.5 in the config"):
        check_shard_settings(eight_shards, FrontEndConfig(frame_shift_ms=12.5), TARGET)
    with pytest.raises(CacheError, match=f"target_length is {TARGET} in the shard but 96 in the config"):
        check_shard_settings(eight_shards, FrontEndConfig(), 96)
    with pytest.raises(CacheError, match=f"num_shards is {SHARDS} in the shard but 4"):
        check_shard_settings(eight_shards, FrontEndConfig(), TARGET, 4)
    with pytest.raises(CacheError, match=r"incomplete: index\(es\) \[3\]"):
        check_shard_settings(eight_shards[:3] + eight_shards[4:], FrontEndConfig(), TARGET)
    with pytest.raises(CacheError, match="frame_shift_ms"):
        FbankDataset(eight_shards, 0.0, 1.0, labelled=False, front_end=FrontEndConfig(frame_shift_ms=12.5),
                     target_length=TARGET)


@pytest.fixture(scope="module")
def study_with_cache(tiny_corpus, tmp_path_factory):
    """Results folder with the cache of the `pretrain` and `poly` sets at their default locations."""
    results = tmp_path_factory.mktemp("results")
    for name, key in (("tiny_pretrain", "pretrain"), ("tiny_poly", "poly")):
        build_shard(tiny_corpus[key], results / "cache" / name / "shard-000-of-001.h5", target_length=TARGET)
    return results


def write_study(path, results, **front_end):
    datasets = {name: {"adapter": "synthetic", "options": {"set": name}, "target_length": TARGET, "norm_mean": None,
                       "norm_std": None} for name in ("tiny_pretrain", "tiny_poly")}
    config = {"study": {"name": "t", "results": str(results), "pretrain_dataset": "tiny_pretrain"},
              "front_end": front_end, "datasets": datasets,
              "model": {"encoder": {"embed_dim": 32, "depth": 1, "num_heads": 2, "max_time_patches": 7},
                        "decoder": {"depth": 1, "groups": 4}},
              "objective": {"clones_stage1": 2},
              "pretrain": {"stage1": {"steps": 1, "warmup_steps": 0, "batch_size": 2, "num_workers": 0,
                                      "checkpoint_every": 1, "log_every": 1}},
              "evaluation": {"benchmarks": {"poly": {"dataset": "tiny_poly", "eval_split": "test", "num_workers": 0,
                                                     "linear": {"steps": 1, "batch_size": 4}}}}}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("command", ["pretrain", "probe"])
def test_jobs_refuse_shards_built_with_another_front_end_before_the_first_step(study_with_cache, tmp_path, capsys,
                                                                               command):
    config = write_study(tmp_path / "study.yaml", study_with_cache, frame_shift_ms=12.5)
    out = tmp_path / "out"
    args = {"pretrain": ["pretrain", "--config", str(config), "--stage", "1", "--out", str(out), "--device", "cpu"],
            "probe": ["probe", "--config", str(config), "--benchmark", "poly", "--random-init", "--out", str(out),
                      "--device", "cpu"]}[command]
    assert main(args) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "front_end.frame_shift_ms is 10.0 in the shard but 12.5 in the config" in errors[0]
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoint.pt").exists()


def test_a_job_refuses_shards_of_another_target_length(study_with_cache, tmp_path, capsys):
    config = write_study(tmp_path / "study.yaml", study_with_cache)
    data = yaml.safe_load(config.read_text())
    data["datasets"]["tiny_poly"]["target_length"] = 96
    config.write_text(yaml.safe_dump(data))
    assert main(["probe", "--config", str(config), "--benchmark", "poly", "--random-init", "--out",
                 str(tmp_path / "out"), "--device", "cpu"]) == 1
    assert f"target_length is {TARGET} in the shard but 96 in the config" in capsys.readouterr().err


def test_matching_settings_run(study_with_cache, tmp_path):
    config = write_study(tmp_path / "study.yaml", study_with_cache)
    out = tmp_path / "out"
    assert main(["probe", "--config", str(config), "--benchmark", "poly", "--random-init", "--out", str(out),
                 "--device", "cpu", "--max-steps", "1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["benchmark"] == "poly"


# --- declared sizes before allocation (issue 18.2) ----------------------------------------------------------
def test_a_shard_declaring_a_billion_rows_is_refused_before_any_allocation(eight_shards, tmp_path):
    """A real shard whose fbank was resized to 10^9 rows (a 2-MB file: unwritten chunks take no disk): the
    reader allocated per declared row (22 GB RSS, OOM-killed); now one CacheError line, under a 1-GiB budget."""
    from bombs import row_bomb_shard
    from capped import cli_body, run_capped

    bomb = row_bomb_shard(eight_shards[0], tmp_path / "bomb.h5")
    assert bomb.stat().st_size < 4 * 2**20
    body = ("from sslam.data.datasets import FbankDataset\nfrom sslam.runtime.errors import CacheError\n"
            f"try:\n    FbankDataset([{str(bomb)!r}], 0.0, 1.0, labelled=True)\n"
            "except CacheError as error:\n    print('refused:', error)\n")
    run = run_capped(body, preamble="import sslam.data.datasets")
    assert run.returncode == 0 and "declares 1000000000 clips but stores" in run.stdout, run.describe()
    assert run.growth < 2**30, run.describe()
    run = run_capped(cli_body("cache", "verify", bomb), preamble="import sslam.data.cache, sslam.cli")
    assert run.returncode == 1 and "declares 1000000000 clips but stores" in run.stdout, run.describe()
    assert "Traceback" not in run.stderr and run.growth < 2**30, run.describe()


@pytest.mark.parametrize("change, message", [
    (lambda shard: shard.attrs.__setitem__("num_skipped", 3), "manifest rows of this shard"),
    (lambda shard: shard.attrs.__setitem__("classes", json.dumps(["a", "b"])), "labels has shape"),
    (lambda shard: shard.attrs.__setitem__("target_length", 10**7), "target_length 10000000"),
])
def test_sizes_a_shard_states_must_agree(eight_shards, tmp_path, change, message):
    shard_path = shutil.copy(eight_shards[1], tmp_path / "odd.h5")
    with h5py.File(shard_path, "r+") as shard:
        change(shard)
    with pytest.raises(CacheError, match=message):
        FbankDataset([shard_path], 0.0, 1.0, labelled=True)
    assert any(message in problem for problem in verify_shard(shard_path))


def test_a_shard_without_its_attributes_is_one_line(eight_shards, tmp_path):
    shard_path = shutil.copy(eight_shards[2], tmp_path / "bare.h5")
    with h5py.File(shard_path, "r+") as shard:
        del shard.attrs["stat_sum"], shard.attrs["front_end"]
    with pytest.raises(CacheError, match="no normalisation sums"):
        FbankDataset([shard_path], None, None, labelled=False)
    assert len(FbankDataset([shard_path], 0.0, 1.0, labelled=False)) > 0
