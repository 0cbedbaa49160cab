"""The loop in-process: NaN stops the run naming step and term with the last snapshot intact; checkpoint
contents; the CLI's argument checks."""
import json
import time

import pytest
import torch
from torch.utils.data import Dataset

from sslam.cli import main
from sslam.runtime.configuration import load_yaml
from sslam.runtime.errors import ConfigError
from sslam.train.config import train_config_for_stage
from sslam.train.loop import CheckpointMismatch, NonFiniteLossError, Pretrainer, RunIdentity
from sslam.train.pretrain import build_objective, objective_config
from sslam.train.state import load_training_state

from train_helpers import NUM_BINS, NUM_FRAMES, tiny_study


class PoisonedClips(Dataset):
    """Random clips that turn NaN from the `first_bad_read`-th item read on (reads are in loop order)."""

    def __init__(self, num_clips: int, first_bad_read: int) -> None:
        self.clips = torch.randn(num_clips, NUM_FRAMES, NUM_BINS)
        self.first_bad_read, self.reads = first_bad_read, 0

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, index):
        self.reads += 1
        clip = self.clips[index].clone()
        if self.reads > self.first_bad_read:
            clip[0, 0] = float("nan")
        return clip


def _trainer(tmp_path, dataset, stage=1, variant=None, run="run", **train_overrides):
    config = load_yaml(tiny_study(tmp_path, **{f"stage{stage}": train_overrides}))
    train = train_config_for_stage(config, stage)
    torch.manual_seed(0)
    objective, encoder_cfg, decoder_cfg, _ = build_objective(config, stage, variant, seed=0, norm_stats=(0.0, 1.0))
    identity = RunIdentity(stage, variant, {"embed_dim": encoder_cfg.embed_dim}, {"depth": decoder_cfg.depth})
    return Pretrainer(objective, dataset, train, tmp_path / run, identity, show_progress=False)


def test_nan_in_the_data_stops_with_step_and_terms_and_keeps_last_snapshot(tmp_path):
    batch = 4
    trainer = _trainer(tmp_path, PoisonedClips(16, first_bad_read=5 * batch), steps=8, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=r"update 6: .*local_unmixed=nan.*global_unmixed=nan"):
        trainer.run()
    snapshot = load_training_state(tmp_path / "run")
    assert snapshot["step"] == 4  # the snapshot of update 4 is intact; nothing was written after the NaN
    assert all(torch.isfinite(t).all() for t in snapshot["student"].values())
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5]


def test_snapshot_holds_the_contract_keys(tmp_path):
    trainer = _trainer(tmp_path, PoisonedClips(8, first_bad_read=10**9), steps=2, checkpoint_every=2)
    trainer.run()
    snapshot = load_training_state(tmp_path / "run")
    assert snapshot["format"] == "sslam" and snapshot["version"] == 1 and snapshot["stage"] == 1
    expected_keys = {"student", "decoder", "teacher", "optimizer", "scheduler", "rng", "data", "config", "model"}
    assert expected_keys <= set(snapshot)
    assert {"python", "numpy", "torch", "objective"} <= set(snapshot["rng"][0])
    assert snapshot["data"]["batches_consumed"] == 2 and snapshot["scheduler"]["last_epoch"] == 2
    # The teacher moved by EMA only: close to, but not equal to, the student.
    student, teacher = snapshot["student"], snapshot["teacher"]
    assert not torch.equal(student["blocks.0.mlp.fc1.weight"], teacher["blocks.0.mlp.fc1.weight"])


def test_the_ema_schedule_has_one_owner_the_training_stage(tmp_path):
    config = load_yaml(tiny_study(tmp_path))
    objective_cfg = objective_config(config, "SSLAM")
    assert not any(name.startswith("ema") for name in vars(objective_cfg))
    for where, section in (("objective", config["objective"]), ("variants.SSLAM", {})):
        config["variants"] = {"SSLAM": section}
        section["ema_decay_end"] = 0.5
        with pytest.raises(ConfigError, match=rf"{where}.ema_decay_end has moved: .*pretrain.stage2.ema_end"):
            objective_config(config, "SSLAM")
        del section["ema_decay_end"]


def test_the_loop_drives_the_teacher_with_the_stage_schedule(tmp_path):
    trainer = _trainer(tmp_path, PoisonedClips(8, first_bad_read=10**9), steps=3, checkpoint_every=3,
                       ema_start=0.5, ema_end=0.9, ema_anneal_steps=4)
    decays = []
    trainer.objective.update_teacher = decays.append  # record what the loop hands over
    metrics = trainer.run()
    assert decays == pytest.approx([0.6, 0.7, 0.8]) and metrics["ema_decay"] == pytest.approx(0.8)


def test_cli_rejects_stage2_without_init_and_missing_cache(tmp_path, capsys):
    config = tiny_study(tmp_path)
    assert main(["pretrain", "--config", str(config), "--stage", "2", "--out", str(tmp_path / "s2")]) == 1
    assert "--init" in capsys.readouterr().err
    assert main(["pretrain", "--config", str(config), "--stage", "1", "--out", str(tmp_path / "s1"),
                 "--shards", str(tmp_path / "nope.h5")]) == 1
    assert "nope.h5" in capsys.readouterr().err


@pytest.mark.slow
def test_mlflow_run_gets_tags_params_and_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = tiny_study(tmp_path, stage1={"steps": 2, "checkpoint_every": 2})
    assert main(["pretrain", "--config", str(config), "--stage", "1", "--out", str(tmp_path / "s1"),
                 "--no-progress"]) == 0
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("sslam").experiment_id])
    assert run.data.tags["stage"] == "1" and run.data.tags["job"] == "pretrain"
    assert run.data.tags["code"].startswith("static-")
    assert run.data.params["pretrain.steps"] == "2" and run.data.params["objective.clones_stage1"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert run.info.status == "FINISHED"


def test_bf16_autocast_path_runs_and_keeps_fp32_weights(tmp_path):
    trainer = _trainer(tmp_path, PoisonedClips(8, first_bad_read=10**9), steps=2, checkpoint_every=2,
                       precision="bf16")
    assert trainer.config.autocast_dtype("cpu") == torch.bfloat16
    metrics = trainer.run()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert all(p.dtype == torch.float32 for p in trainer.objective.parameters())


def test_mixit_head_is_optimised_snapshotted_and_resumed_exactly(tmp_path):
    """Stage-2 MixIT: the head trains, lives in state/last.pt (not in checkpoint.pt), and an interrupted
    run resumed from its snapshot ends bit-identical to an uninterrupted one (both generators included)."""
    clean = PoisonedClips(8, first_bad_read=10**9)
    poisoned = PoisonedClips(8, first_bad_read=3 * 4)  # update 4 turns NaN, after the snapshot of update 2
    poisoned.clips = clean.clips.clone()
    settings = dict(stage=2, variant="MixIT", steps=6, checkpoint_every=2)

    reference = _trainer(tmp_path, clean, run="reference", **settings)
    head_before = {k: v.clone() for k, v in reference.objective.mixit_heads.state_dict().items()}
    assert any(name.startswith("mixit.") for group in reference.optimizer.param_groups for name in group["names"])
    reference.run()
    assert all(not torch.equal(v, reference.objective.mixit_heads.state_dict()[k]) for k, v in head_before.items())

    interrupted = _trainer(tmp_path, poisoned, run="interrupted", **settings)
    with pytest.raises(NonFiniteLossError):
        interrupted.run()
    snapshot = load_training_state(tmp_path / "interrupted")
    assert snapshot["step"] == 2 and set(snapshot["heads"]) == {"mixit"}
    resumed = _trainer(tmp_path, PoisonedClips(8, first_bad_read=10**9), run="interrupted", **settings)
    resumed.dataset.clips = clean.clips.clone()
    resumed.restore(snapshot)
    resumed.run()
    for part in ("student", "decoder", "mixit_heads"):
        expected = getattr(reference.objective, part).state_dict()
        for name, tensor in getattr(resumed.objective, part).state_dict().items():
            assert torch.equal(tensor, expected[name]), f"{part}.{name} differs after resume"
    ref_rng, res_rng = reference.objective.generator_state(), resumed.objective.generator_state()
    assert all(torch.equal(ref_rng[key], res_rng[key]) for key in ("masks_and_mixing", "decoder_noise"))

    resumed.save_final(tmp_path / "final.pt")
    final = torch.load(tmp_path / "final.pt", weights_only=False)
    assert "heads" not in final and not any("mixit" in key for part in ("student", "decoder", "teacher")
                                            for key in final[part])
    del snapshot["heads"]
    with pytest.raises(CheckpointMismatch, match="no .mixit. head"):
        _trainer(tmp_path, clean, run="other", **settings).restore(snapshot)


def test_cli_device_cuda_without_a_gpu_is_one_line_at_once(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here")
    config = tiny_study(tmp_path)
    started = time.monotonic()
    assert main(["pretrain", "--config", str(config), "--stage", "1", "--out", str(tmp_path / "s1"),
                 "--device", "cuda"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "CUDA requested but unavailable" in error[0] and "torch" in error[0]
    assert time.monotonic() - started < 10 and not (tmp_path / "s1" / "state").exists()


def test_progress_lines_without_a_terminal_and_banner_first(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("SSLAM_PROGRESS_SECONDS", "0")
    caplog.set_level("INFO")
    config = tiny_study(tmp_path, stage1={"steps": 3, "checkpoint_every": 3})
    assert main(["pretrain", "--config", str(config), "--stage", "1", "--out", str(tmp_path / "s1"),
                 "--no-progress"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[stage 1]")]
    assert [line.split(" | ")[0] for line in lines] == [f"[stage 1] step {k}/3 ({100 * k / 3:.1f}%)"
                                                       for k in (1, 2, 3, 3)]  # every step, then the final line
    assert all("clips/s" in line and "elapsed" in line and "ETA" in line for line in lines)
    assert "loss" in lines[-1]
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith("host ") and any(m.startswith("torch ") for m in messages[:5])


@pytest.mark.slow
def test_compiled_objective_trains_like_eager(tmp_path):
    # The compiler's own random numbers (inductor's Philox) differ from eager ones by design; with its
    # fallback to the eager generators the compiled updates must match eager ones up to float rounding.
    import torch._inductor.config as inductor

    runs = {}
    with inductor.patch(fallback_random=True):
        for compiled in (False, True):
            torch.manual_seed(123)
            trainer = _trainer(tmp_path / str(compiled), PoisonedClips(8, first_bad_read=10**9), steps=3,
                               checkpoint_every=3, log_every=1, compile=compiled)
            runs[compiled] = (trainer.run()["loss"], trainer.objective.student.state_dict())
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5)
    for name, eager in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], eager, rtol=1e-4, atol=1e-5)


class RunsCode:
    """A planted object: unpickling it would call `exec`."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('planted code ran')",))


def test_cli_refuses_a_planted_snapshot_in_one_line(tmp_path, capsys):
    config = tiny_study(tmp_path)
    planted = tmp_path / "s1" / "state" / "last.pt"
    planted.parent.mkdir(parents=True)
    torch.save({"format": "sslam", "optimizer": {}, "step": 1, "payload": RunsCode()}, planted)
    assert main(["pretrain", "--config", str(config), "--stage", "1", "--out", str(tmp_path / "s1"),
                 "--resume"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(planted) in error[0] and "builtins.exec" in error[0]


def test_a_nan_between_log_points_stops_at_the_next_read_naming_its_update(tmp_path):
    """The terms are read every log_every updates and before every snapshot. A NaN at update 6 with log_every 4
    and snapshots every 5: the read at the log point of update 8 finds it and names update 6; the snapshot of
    update 5 stays the last one, and no metrics line after update 4 is written."""
    batch = 4
    trainer = _trainer(tmp_path, PoisonedClips(16, first_bad_read=5 * batch), steps=12, log_every=4,
                       checkpoint_every=5)
    with pytest.raises(NonFiniteLossError, match=r"update 6: .*local_unmixed=nan.*global_unmixed=nan.*step <= 5"):
        trainer.run()
    assert trainer.step == 8  # found at the read of update 8
    assert load_training_state(tmp_path / "run")["step"] == 5
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [4]


def test_on_steady_is_called_once_after_an_update_a_log_point_and_a_snapshot(tmp_path):
    calls = []
    trainer = _trainer(tmp_path, PoisonedClips(8, first_bad_read=10**9), steps=7, log_every=2, checkpoint_every=3)
    trainer.on_steady = lambda: calls.append(trainer.step)
    trainer.on_steady_end = lambda: calls.append(("end", trainer.step))
    trainer.run()
    assert calls == [3, ("end", 7)]  # update 1, the log point of update 2, the snapshot of update 3; the last


def test_logged_means_and_grad_norm_are_the_device_values(tmp_path):
    """The window's sums are made on the host from one read per log point; they equal the device's float64 sums."""
    trainer = _trainer(tmp_path, PoisonedClips(8, first_bad_read=10**9), steps=4, log_every=4, checkpoint_every=4)
    seen = []
    update = trainer.update

    def recording_update(*args):
        output, grad_norm = update(*args)
        seen.append((output.summary.double(), grad_norm.item()))
        return output, grad_norm

    trainer.update = recording_update
    line = trainer.run()
    total = seen[0][0]
    for summary, _ in seen[1:]:
        total = total + summary
    assert line["loss"] == float(total[0]) / 4 and line["grad_norm"] == seen[-1][1]


def test_compile_is_on_for_cuda_jobs_by_default_and_can_be_switched_off(tmp_path):
    config = load_yaml(tiny_study(tmp_path))
    auto = train_config_for_stage(config, 1)
    assert auto.compile == "auto" and auto.compiles("cuda") and not auto.compiles("cpu")
    config["pretrain"]["stage1"]["compile"] = False
    assert not train_config_for_stage(config, 1).compiles("cuda")
    config["pretrain"]["stage1"]["compile"] = True
    assert train_config_for_stage(config, 1).compiles("cpu")
    config["pretrain"]["stage1"]["compile"] = "sometimes"
    with pytest.raises(ConfigError, match="compile"):
        train_config_for_stage(config, 1)
