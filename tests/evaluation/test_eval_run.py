"""End to end on the tiny synthetic benchmarks: `sslam probe` / `sslam finetune` write a
well-formed metrics.json for every protocol (split, folds, polyphony bins)."""
import json

import numpy as np
import pytest
import torch

from sslam.cli import main
from sslam.runtime.configuration import load_yaml
from sslam.evaluation.run import load_backbone

from eval_helpers import POLY, TINY_ENCODER, read_metrics, save_checkpoint


def test_probe_from_a_checkpoint_writes_well_formed_metrics(write_config, tmp_path):
    config = write_config({"poly": POLY})
    checkpoint = tmp_path / "checkpoint.pt"
    save_checkpoint(checkpoint)
    out = tmp_path / "eval"
    assert main(["probe", "--config", str(config), "--benchmark", "poly", "--checkpoint", str(checkpoint),
                 "--out", str(out), "--seed", "1"]) == 0
    metrics = read_metrics(out)
    assert (metrics["regime"], metrics["variant"], metrics["seed"], metrics["metric"]) == ("linear", "SSLAM", 1, "map")
    assert metrics["checkpoint"] == str(checkpoint) and metrics["checkpoint_variant"] == "SSLAM"
    assert metrics["weights"] == "student" and metrics["pretrain_step"] == 7
    assert 0.0 < metrics["value"] <= 1.0 and metrics["steps"] == 3
    assert len(metrics["per_class"]) == len(metrics["classes"]) == 14
    scored = [v for v in metrics["per_class"].values() if v is not None]
    assert metrics["value"] == pytest.approx(sum(scored) / len(scored))
    assert metrics["classes_without_positives"] == len(metrics["per_class"]) - len(scored)
    # poly has no validation rows: the default best_on_valid headline is the last model, and says so
    assert metrics["selection"]["policy"] == "last" and metrics["selection"]["requested"] == "best_on_valid"
    # (not compared with a fingerprint computed now: the package may be edited while the test runs)
    assert metrics["code_hash"].startswith("static-") and int(metrics["code_hash"].removeprefix("static-"), 16) >= 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in log if "evaluation" in r] == [3]   # one epoch of 24 clips: one evaluation point


def test_finetune_random_init_with_official_selection(write_config, tmp_path):
    benchmark = dict(POLY, finetune={"steps": 4, "batch_size": 8, "selection": "best_on_eval",
                                     "eval_interval_steps": 2})
    config = write_config({"poly": benchmark})
    out = tmp_path / "eval"
    assert main(["finetune", "--config", str(config), "--benchmark", "poly", "--random-init", "--out", str(out)]) == 0
    metrics = read_metrics(out)
    assert metrics["regime"] == "finetune" and metrics["variant"] == "random-init"
    assert metrics["selection"]["policy"] == "best_on_eval" and metrics["selection"]["step"] in (2, 4)
    assert metrics["value"] == pytest.approx(metrics["selection"]["value"])
    evaluations = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "evaluation" in l]
    assert [e["step"] for e in evaluations] == [2, 4]
    assert metrics["value"] == pytest.approx(max(e["evaluation"] for e in evaluations))


def test_best_on_valid_without_valid_rows_falls_back_to_last_and_says_so(write_config, tmp_path):
    config = write_config({"poly": dict(POLY, linear={"steps": 2, "batch_size": 8, "selection": "best_on_valid"})})
    out = tmp_path / "eval"
    assert main(["probe", "--config", str(config), "--benchmark", "poly", "--checkpoint", "random",
                 "--out", str(out), "--max-steps", "1"]) == 0
    selection = read_metrics(out)["selection"]
    assert selection["policy"] == "last" and selection["requested"] == "best_on_valid" and "note" in selection
    assert read_metrics(out)["steps"] == 1


def test_folds_protocol_reports_the_mean_over_folds(write_config, tmp_path):
    config = write_config({"mono": {"dataset": "mono", "task": "multiclass", "metric": "accuracy",
                                    "protocol": "folds", "num_workers": 0, "linear": {"steps": 2, "batch_size": 8}}})
    out = tmp_path / "eval"
    assert main(["probe", "--config", str(config), "--benchmark", "mono", "--random-init", "--out", str(out)]) == 0
    metrics = read_metrics(out)
    folds = metrics["per_fold"]
    assert [f["fold"] for f in folds] == [1, 2, 3]
    assert metrics["value"] == pytest.approx(sum(f["value"] for f in folds) / 3)
    assert metrics["num_test"] == sum(f["num_test"] for f in folds) == 42
    assert all(f["num_train"] + f["num_test"] == 42 for f in folds)
    assert metrics["selection"] == {"policy": "last", "requested": "best_on_valid"}


def test_polyphony_trains_on_poly_and_scores_each_bin(write_config, tmp_path):
    config = write_config({"polyphony": dict(POLY, dataset="polyphony", train_dataset="poly")})
    out = tmp_path / "eval"
    assert main(["probe", "--config", str(config), "--benchmark", "polyphony", "--random-init", "--out", str(out)]) == 0
    metrics = read_metrics(out)
    assert metrics["train_dataset"] == "poly" and metrics["num_train"] == 24
    assert set(metrics["per_bin"]) == {"1", "2", "3"}
    assert sum(b["clips"] for b in metrics["per_bin"].values()) == metrics["num_test"] == 12


def test_teacher_weights_and_random_init_are_loaded_as_asked(tmp_path, write_config):
    checkpoint = tmp_path / "checkpoint.pt"
    student, teacher = save_checkpoint(checkpoint, seed=3)
    config = load_yaml(write_config({"poly": POLY}))
    encoder, info = load_backbone(str(checkpoint), config, "teacher", seed=0)
    torch.testing.assert_close(encoder.state_dict()["blocks.0.attn.qkv.weight"],
                               teacher.state_dict()["blocks.0.attn.qkv.weight"])
    assert info["weights"] == "teacher"
    first, _ = load_backbone("random", config, "student", seed=5)
    again, _ = load_backbone("random:model.encoder", config, "student", seed=5)
    assert first.config.embed_dim == TINY_ENCODER["embed_dim"]
    torch.testing.assert_close(first.state_dict(), again.state_dict())


def test_user_errors_are_one_line_messages(write_config, tmp_path, capsys):
    config = write_config({"poly": dict(POLY, linear={"steps": 2, "weighted_sampling": 10})})
    base = ["probe", "--config", str(config), "--random-init", "--out", str(tmp_path / "o")]
    assert main(base + ["--benchmark", "nope"]) == 1
    assert "not under evaluation.benchmarks" in capsys.readouterr().err
    assert main(base + ["--benchmark", "poly"]) == 1
    assert "weight" in capsys.readouterr().err
    assert main(base + ["--benchmark", "poly", "--shards", str(tmp_path / "missing.h5")]) == 1
    assert "not found" in capsys.readouterr().err



def test_best_on_valid_reports_the_test_score_at_the_best_validation_point(write_config, tmp_path):
    # poly has no `valid` split; using its test rows as the validation split makes the two scores
    # coincide, which checks that the reported score belongs to the selected point.
    linear = {"steps": 4, "batch_size": 8, "selection": "best_on_valid", "eval_interval_steps": 2}
    config = write_config({"poly": dict(POLY, valid_split="test", linear=linear)})
    out = tmp_path / "eval"
    assert main(["probe", "--config", str(config), "--benchmark", "poly", "--random-init", "--out", str(out)]) == 0
    metrics = read_metrics(out)
    assert metrics["selection"]["policy"] == "best_on_valid"
    assert metrics["value"] == pytest.approx(metrics["selection"]["value"])
    assert metrics["selection"]["valid_value"] == pytest.approx(metrics["selection"]["value"])


def test_predictions_npz_holds_each_test_clip_once_and_reproduces_the_scores(write_config, tmp_path):
    from sslam.evaluation.metrics import per_bin, score

    config = write_config({"mono": {"dataset": "mono", "task": "multiclass", "metric": "accuracy",
                                    "protocol": "folds", "num_workers": 0, "linear": {"steps": 2, "batch_size": 8}},
                           "polyphony": dict(POLY, dataset="polyphony", train_dataset="poly")})
    for benchmark in ("mono", "polyphony"):
        out = tmp_path / benchmark
        assert main(["probe", "--config", str(config), "--benchmark", benchmark, "--random-init",
                     "--out", str(out)]) == 0
        metrics = read_metrics(out)
        assert metrics["predictions"] == "predictions.npz"
        with np.load(out / "predictions.npz", allow_pickle=False) as stored:   # no pickled objects
            arrays = {name: stored[name] for name in stored.files}
        count, classes = metrics["num_test_clips"], len(metrics["classes"])
        assert count == metrics["num_test"] and len(set(arrays["clip_id"].tolist())) == count
        assert arrays["clip_id"].dtype.kind == "U" and arrays["round"].dtype.kind == "U"
        assert arrays["targets"].shape == arrays["scores"].shape == (count, classes)
        assert arrays["targets"].dtype == arrays["scores"].dtype == np.float32
        if benchmark == "mono":
            assert "bin" not in arrays
            assert sorted(set(arrays["round"].tolist())) == ["fold1", "fold2", "fold3"]
            for fold in metrics["per_fold"]:
                rows = arrays["round"] == f"fold{fold['fold']}"
                assert rows.sum() == fold["num_test"]
                assert score("accuracy", arrays["targets"][rows], arrays["scores"][rows])["value"] == \
                    pytest.approx(fold["value"], abs=1e-6)
        else:
            assert arrays["bin"].dtype == np.int64 and set(arrays["round"].tolist()) == {"split"}
            recomputed = per_bin("map", arrays["targets"], arrays["scores"], arrays["bin"])
            assert {b: v["clips"] for b, v in recomputed.items()} == \
                {b: v["clips"] for b, v in metrics["per_bin"].items()}
            for name, value in recomputed.items():
                assert value["value"] == pytest.approx(metrics["per_bin"][name]["value"], abs=1e-5)


def test_device_cuda_without_a_gpu_is_one_line(write_config, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here")
    config = write_config({"poly": POLY})
    assert main(["probe", "--config", str(config), "--benchmark", "poly", "--random-init", "--device", "cuda",
                 "--out", str(tmp_path / "o")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "CUDA requested but unavailable" in error[0]
    assert not (tmp_path / "o").exists()


def test_progress_lines_and_banner_without_a_terminal(write_config, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("SSLAM_PROGRESS_SECONDS", "0")
    caplog.set_level("INFO")
    config = write_config({"poly": POLY})
    assert main(["probe", "--config", str(config), "--benchmark", "poly", "--random-init", "--no-progress",
                 "--out", str(tmp_path / "o")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[linear split]")]
    assert [line.split(" | ")[0] for line in lines[:3]] == [f"[linear split] step {k}/3 ({100 * k / 3:.1f}%)"
                                                           for k in (1, 2, 3)]
    assert all("loss" in line and "clips/s" in line and "ETA" in line for line in lines)
    assert caplog.records[0].getMessage().startswith("host ")


class RunsCode:
    """A planted object: unpickling it would call `exec`."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('planted code ran')",))


def test_a_planted_evaluation_state_is_refused_in_one_line(write_config, tmp_path, capsys):
    config = write_config({"poly": POLY})
    planted = tmp_path / "o" / "state" / "last.pt"
    planted.parent.mkdir(parents=True)
    torch.save({"format": "sslam-evaluation-state", "payload": RunsCode()}, planted)
    assert main(["probe", "--config", str(config), "--benchmark", "poly", "--random-init",
                 "--out", str(tmp_path / "o")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(planted) in error[0] and "builtins.exec" in error[0]
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_a_shard_declaring_a_billion_rows_is_one_line_not_an_oom_kill(write_config, cache_dir, tmp_path):
    """Issue 18.2: `sslam probe` on a 2-MB shard whose fbank declares 10^9 rows reached 22 GB RSS; now it stops with
    one line before allocating anything per row (run under a 1-GiB address-space budget)."""
    from bombs import row_bomb_shard
    from capped import cli_body, run_capped

    bomb = row_bomb_shard(cache_dir / "cache" / "poly" / "shard-000-of-001.h5", tmp_path / "shard-000-of-001.h5")
    config = write_config({"poly": POLY})
    run = run_capped(cli_body("probe", "--config", config, "--benchmark", "poly", "--random-init", "--shards", bomb,
                              "--out", tmp_path / "out"),
                     preamble="import sslam.evaluation.run, sslam.cli")
    assert run.returncode == 1, run.describe()
    errors = [line for line in run.stderr.splitlines() if line.startswith("sslam probe: error:")]
    assert len(errors) == 1 and "declares 1000000000 clips but stores" in errors[0], run.describe()
    assert "Traceback" not in run.stderr and run.growth < 2**30, run.describe()


def test_one_run_records_every_selection_with_its_step_score_and_predictions(write_config, tmp_path):
    # The test rows double as validation rows here (poly has no held-out split), so best_on_valid must pick the
    # same point as best_on_eval; last is the final step. Each selection's predictions reproduce its score.
    from sslam.evaluation.metrics import score

    finetune = {"steps": 6, "batch_size": 8, "eval_interval_steps": 2, "selection": "last"}
    config = write_config({"poly": dict(POLY, valid_split="test", finetune=finetune)})
    out = tmp_path / "eval"
    assert main(["finetune", "--config", str(config), "--benchmark", "poly", "--random-init", "--out", str(out)]) == 0
    metrics = read_metrics(out)
    points = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "evaluation" in l]
    assert [p["step"] for p in points] == [2, 4, 6]
    selections = metrics["selections"]
    assert set(selections) == {"last", "best_on_valid", "best_on_eval"}
    assert selections["last"]["step"] == 6 and metrics["selection"]["policy"] == "last"
    assert metrics["value"] == pytest.approx(selections["last"]["value"])
    best = max(p["evaluation"] for p in points)
    assert selections["best_on_eval"]["value"] == pytest.approx(best)
    # ties keep the later point (fairseq's checkpoint_best rule)
    assert selections["best_on_eval"]["step"] == max(p["step"] for p in points if p["evaluation"] == best)
    assert selections["best_on_valid"]["step"] == selections["best_on_eval"]["step"]
    assert selections["best_on_valid"]["valid_value"] == pytest.approx(best)
    assert selections["best_on_valid"]["valid_clips"] == metrics["num_test"]     # the test rows, here
    classes = metrics["classes"]
    for name, entry in selections.items():
        with np.load(out / entry["predictions"], allow_pickle=False) as saved:
            assert score("map", saved["targets"], saved["scores"], classes)["value"] == pytest.approx(entry["value"])
