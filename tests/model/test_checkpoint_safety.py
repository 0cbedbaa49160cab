"""No code runs from a checkpoint, and damaged or ill-typed checkpoints are one clear line (issue 10.1, 10.2).

Each hostile file would create a marker file if anything from it ran; every entry point that reads a
checkpoint (extract, convert, probe, finetune, pretrain --init) gets one and must refuse it in one line.
"""
import ast
import collections
import enum
import json
import logging
import os
import subprocess
import sys
import typing
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile
import torch
import yaml
from safetensors.torch import save_file

from sslam.cli import main as cli_main
from sslam.runtime.errors import SslamError
from sslam.runtime.configuration import to_dict
from sslam.data.cache import front_end_json
from sslam.audio.config import FrontEndConfig
from sslam.model import AudioEncoder, EncoderConfig
from sslam.model.checkpoints.types import CheckpointError, UnsafeCheckpointError
from sslam.model.checkpoints.read import load_encoder, read_checkpoint

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ hostile payloads
class RunsShell:
    """os.system("touch MARKER") when unpickled by a stock unpickler."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Evaluates:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return eval, (f"open({self.marker!r}, 'w').close()",)


class Spawns:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return subprocess.Popen, (["touch", self.marker],)


class Executes:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


class HidesInATensorRebuild:
    """The shell call smuggled in as the `func` of torch's own (allow-listed) tensor rebuild helper."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return torch._tensor._rebuild_from_type_v2, (os.system, torch.Tensor, (f"touch {self.marker}",), {})


class ConstructedByItsClass:
    """An unknown class whose construction (REDUCE of the class itself) would run its code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return type(self), (self.marker,)


PAYLOADS = [RunsShell, Evaluates, Spawns, Executes, HidesInATensorRebuild, ConstructedByItsClass]
NAMED = {RunsShell: "system", Evaluates: "eval", Spawns: "Popen", Executes: "exec",
         HidesInATensorRebuild: "system", ConstructedByItsClass: "ConstructedByItsClass"}


def own_checkpoint(encoder, **extra):
    return {"format": "sslam", "version": 1, "model": {"encoder": to_dict(encoder.config), "decoder": None},
            "student": encoder.state_dict(), "teacher": encoder.state_dict(), "decoder": None,
            "stage": 1, "variant": None, "step": 3, **extra}


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda cls: cls.__name__)
def test_a_code_running_object_is_refused_naming_the_file_and_the_object(tmp_path, tiny_config, payload):
    marker = tmp_path / "marker"
    path = tmp_path / "hostile.pt"
    torch.save(own_checkpoint(AudioEncoder(tiny_config), rng={"python": payload(marker)}), path)
    with pytest.raises(UnsafeCheckpointError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and NAMED[payload] in message and "\n" not in message
    assert not marker.exists()


def test_stock_torch_load_would_have_run_the_payload(tmp_path, tiny_config):
    """The payload is real: it is what the restricted loader stops."""
    marker = tmp_path / "marker"
    path = tmp_path / "hostile.pt"
    torch.save({"x": RunsShell(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------- inert config objects still load
class Modality(enum.Enum):
    AUDIO = "AUDIO"


def fake_module(name, **classes):
    module = type(sys)(name)
    for class_name, cls in classes.items():
        cls.__module__, cls.__qualname__ = name, class_name
        setattr(module, class_name, cls)
    return module


def test_fairseq_style_config_objects_numpy_values_and_enums_are_accepted(tmp_path, monkeypatch, tiny_config):
    """What real fairseq/EAT files pickle besides tensors: omegaconf containers with metadata and typing
    annotations, argparse args, fairseq enums, numpy arrays and scalars, defaultdicts."""
    class DictConfig:
        pass

    class ContainerMetadata:
        pass

    class AnyNode:
        pass

    class LogFormat(enum.Enum):
        JSON = "json"

    modules = {"omegaconf": fake_module("omegaconf"),
               "omegaconf.dictconfig": fake_module("omegaconf.dictconfig", DictConfig=DictConfig),
               "omegaconf.base": fake_module("omegaconf.base", ContainerMetadata=ContainerMetadata),
               "omegaconf.nodes": fake_module("omegaconf.nodes", AnyNode=AnyNode),
               "fairseq": fake_module("fairseq"), "fairseq.dataclass": fake_module("fairseq.dataclass"),
               "fairseq.dataclass.constants": fake_module("fairseq.dataclass.constants", LogFormat=LogFormat)}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    metadata = ContainerMetadata()
    metadata.__dict__.update(ref_type=typing.Any, object_type=dict, key_type=typing.Optional[int], flags={})
    heads = AnyNode()
    heads.__dict__.update(_val=tiny_config.num_heads, _metadata=metadata)
    cfg = DictConfig()
    cfg.__dict__.update(_content={"model": {"num_heads": heads}, "log_format": LogFormat.JSON}, _metadata=metadata,
                        _parent=None)
    student = AudioEncoder(tiny_config)
    from test_checkpoints import fairseq_encoder_keys

    import argparse
    payload = {"cfg": cfg, "args": argparse.Namespace(lr=[1e-4]), "model": fairseq_encoder_keys(student.state_dict()),
               "extra_state": {"best": np.float64(0.5), "history": np.arange(3),
                               "counts": collections.defaultdict(list, {"a": [1]}), "none": type(None)}}
    path = tmp_path / "fairseq.pt"
    torch.save(payload, path)
    for name in modules:
        monkeypatch.delitem(sys.modules, name)
    loaded = read_checkpoint(path, num_mel_bins=tiny_config.num_mel_bins)
    assert loaded.encoder_config == tiny_config  # num_heads found inside the stubbed omegaconf tree


def test_an_unknown_class_may_be_named_but_not_built(tmp_path, tiny_config):
    """omegaconf stores classes as annotations (object_type=SomeConfig): a mere reference is data."""
    state = AudioEncoder(tiny_config).state_dict()
    path = tmp_path / "reference.pt"
    torch.save({**own_checkpoint(AudioEncoder(tiny_config)), "student": state, "object_type": RunsShell}, path)
    assert read_checkpoint(path).meta["step"] == 3


# ---------------------------------------------------------------------------------- dtypes, shapes, damage
def _encoder_state(config, **changes):
    state = AudioEncoder(config).state_dict()
    state.update(changes)
    return state


def _save_own(path, config, state):
    encoder = AudioEncoder(config)
    torch.save({**own_checkpoint(encoder), "student": state}, path)


def _hf_state(config, dtype=None, **changes):
    from test_checkpoints import fairseq_encoder_keys

    state = {}
    for key, value in fairseq_encoder_keys(_encoder_state(config, **changes)).items():
        key = key.replace("modality_encoders.IMAGE.", "").replace("context_encoder.norm", "pre_norm")
        state["model." + key] = (value.to(dtype) if dtype is not None else value).contiguous()
    return state


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


BAD_FILES = {}


def bad(name, suffix=".pt", match=None):
    def register(build):
        BAD_FILES[name] = (build, suffix, match)
        return build
    return register


@bad("missing", match="not found")
def _(path, config):
    pass


@bad("empty .pt", match="cannot read")
def _(path, config):
    path.write_bytes(b"")


@bad("junk .pt", match="cannot read")
def _(path, config):
    path.write_bytes(b"this is no checkpoint" * 10)


@bad("truncated .pt", match="truncated")
def _(path, config):
    _save_own(path, config, _encoder_state(config))
    _truncate(path)


@bad("a list, not a dict", match="expected a dict")
def _(path, config):
    torch.save([1, 2, 3], path)


@bad("unknown layout", match="not a sslam")
def _(path, config):
    torch.save({"weights": torch.zeros(2)}, path)


@bad("own format without student", match="student")
def _(path, config):
    torch.save({**own_checkpoint(AudioEncoder(config)), "student": None}, path)


@bad("int64 weight", match=r"'blocks\.0\.norm1\.weight' has dtype int64")
def _(path, config):
    _save_own(path, config, _encoder_state(config, **{"blocks.0.norm1.weight": torch.ones(config.embed_dim, dtype=torch.int64)}))


@bad("bool weight", match=r"'cls_token' has dtype bool")
def _(path, config):
    _save_own(path, config, _encoder_state(config, cls_token=torch.ones(1, 1, config.embed_dim, dtype=torch.bool)))


@bad("NaN weight", match=r"'blocks\.1\.mlp\.fc2\.bias' contains NaN")
def _(path, config):
    _save_own(path, config, _encoder_state(config, **{"blocks.1.mlp.fc2.bias": torch.full((config.embed_dim,), float("nan"))}))


@bad("wrong shape", match=r"blocks\.0\.attn\.proj\.weight has shape \(48, 47\)")
def _(path, config):
    _save_own(path, config, _encoder_state(config, **{"blocks.0.attn.proj.weight": torch.zeros(48, 47)}))


@bad("missing key", match="missing keys.*pre_norm.bias")
def _(path, config):
    state = _encoder_state(config)
    del state["pre_norm.bias"]
    _save_own(path, config, state)


@bad("non-tensor entry", match="not a tensor")
def _(path, config):
    _save_own(path, config, _encoder_state(config, **{"blocks.0.norm1.bias": [0.0] * config.embed_dim}))


@bad("2-D patch embedding", match="4-D tensor")
def _(path, config):
    torch.save(_encoder_state(config, **{"patch_embed.weight": torch.zeros(48, 256)}), path)


@bad("unknown fairseq key", match="alibi")
def _(path, config):
    from test_checkpoints import fairseq_encoder_keys

    torch.save({"model": {**fairseq_encoder_keys(_encoder_state(config)), "alibi_scale": torch.zeros(1)}}, path)


@bad("empty safetensors", ".safetensors", match="cannot read")
def _(path, config):
    path.write_bytes(b"")


@bad("truncated safetensors", ".safetensors", match="truncated")
def _(path, config):
    save_file(_hf_state(config), str(path))
    _truncate(path)


@bad("garbage safetensors header", ".safetensors", match="cannot read")
def _(path, config):
    path.write_bytes((200).to_bytes(8, "little") + b"{not json" + b" " * 191)


@bad("int64 safetensors", ".safetensors", match="int64")
def _(path, config):
    save_file(_hf_state(config, dtype=torch.int64), str(path))


@bad("bool safetensors", ".safetensors", match="bool")
def _(path, config):
    save_file(_hf_state(config, dtype=torch.bool), str(path))


@bad("bad config metadata", ".safetensors", match="not valid JSON")
def _(path, config):
    save_file(_hf_state(config), str(path), metadata={"sslam_encoder_config": "{embed_dim: 48"})


@bad("hostile pickle", match="refused")
def _(path, config):
    torch.save(own_checkpoint(AudioEncoder(config), rng=RunsShell(path.with_name("marker"))), path)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_every_bad_file_is_one_clear_line(tmp_path, capsys, tiny_config, name):
    build, suffix, match = BAD_FILES[name]
    path = tmp_path / f"bad{suffix}"
    build(path, tiny_config)
    with pytest.raises(CheckpointError, match=match):
        load_encoder(path, num_heads=tiny_config.num_heads, num_mel_bins=tiny_config.num_mel_bins)
    code = cli_main(["convert", str(path), str(tmp_path / "out.safetensors"), "--num-heads",
                     str(tiny_config.num_heads), "--num-mel-bins", str(tiny_config.num_mel_bins)])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and err.startswith("sslam convert: error:"), err
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "marker").exists()


def test_the_table_is_large_enough():
    assert len(BAD_FILES) >= 16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_upcast_with_one_warning(tmp_path, tiny_config, caplog, dtype):
    student = AudioEncoder(tiny_config)
    path = tmp_path / "half.safetensors"
    save_file({k: v for k, v in _hf_state(tiny_config, dtype=dtype).items()}, str(path))
    with caplog.at_level(logging.WARNING, logger="sslam.model.checkpoints.read"):
        encoder = load_encoder(path, num_heads=tiny_config.num_heads, num_mel_bins=tiny_config.num_mel_bins)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(dtype).removeprefix("torch.") in warnings[0].getMessage()
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    del student


# ---------------------------------------------------------------------------------- every entry point
def write_shard(path: Path, frames: int, bins: int, clips: int = 8) -> None:
    """A complete shard in the cache layout, built with the study's default front end (but `bins` mel bins)."""
    rng = np.random.default_rng(0)
    data = (-5 + rng.standard_normal((clips, frames, bins))).astype(np.float16)
    string = h5py.string_dtype()
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as shard:
        shard.create_dataset("fbank", data=data, chunks=(1, frames, bins))
        shard.create_dataset("num_frames", data=np.full(clips, frames, dtype=np.int32))
        shard.create_dataset("clip_id", data=[f"c{i}" for i in range(clips)], dtype=string)
        shard.create_dataset("split", data=["train"] * clips, dtype=string)
        shard.create_dataset("fold", data=np.zeros(clips, dtype=np.int16))
        shard.create_dataset("labels", data=np.zeros((clips, 0), dtype=np.uint8))
        shard.create_group("extra")
        shard.attrs.update({"front_end": front_end_json(FrontEndConfig(num_mel_bins=bins)), "target_length": frames,
                            "num_mel_bins": bins, "classes": "[]", "class_names": "[]", "num_classes": 0,
                            "shard_index": 0, "num_shards": 1, "num_skipped": 0, "manifest_hash": "x",
                            "manifest_rows": clips, "stat_sum": float(data.astype(np.float64).sum()),
                            "stat_sumsq": float(np.square(data.astype(np.float64)).sum()), "stat_count": data.size})
        shard.attrs["complete"] = True


@pytest.fixture
def hostile(tmp_path, tiny_config):
    marker = tmp_path / "marker"
    path = tmp_path / "hostile.pt"
    torch.save(own_checkpoint(AudioEncoder(tiny_config), rng={"python": RunsShell(marker)}), path)
    return path, marker


@pytest.fixture
def study(tmp_path, tiny_config):
    results = tmp_path / "results"
    frames, bins = 32, tiny_config.num_mel_bins
    write_shard(results / "cache" / "tiny" / "shard-000-of-001.h5", frames, bins)
    config = {"study": {"name": "t", "results": str(results), "pretrain_dataset": "tiny"},
              "front_end": {"num_mel_bins": bins},
              "datasets": {"tiny": {"adapter": "fairseq", "target_length": frames, "norm_mean": None,
                                    "norm_std": None}},
              "model": {"encoder": to_dict(tiny_config), "decoder": {"depth": 1, "groups": 4}},
              "evaluation": {"benchmarks": {"b": {"dataset": "tiny", "num_workers": 0}}},
              "pretrain": {"stage2": {"steps": 2, "warmup_steps": 0, "batch_size": 2, "num_workers": 0,
                                      "checkpoint_every": 1, "log_every": 1}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def entry_points(hostile_path, study, out):
    audio = out.parent / "clip.wav"
    soundfile.write(audio, np.sin(np.linspace(0, 400, 16000)).astype(np.float32), 16000)
    return {
        "extract": ["extract", str(hostile_path), str(audio), "--out", str(out)],
        "convert": ["convert", str(hostile_path), str(out / "x.safetensors")],
        "probe": ["probe", "--config", str(study), "--benchmark", "b", "--checkpoint", str(hostile_path),
                  "--out", str(out)],
        "finetune": ["finetune", "--config", str(study), "--benchmark", "b", "--checkpoint", str(hostile_path),
                     "--out", str(out)],
        "pretrain --init": ["pretrain", "--config", str(study), "--stage", "2", "--init", str(hostile_path),
                            "--out", str(out), "--device", "cpu"],
    }


@pytest.mark.parametrize("entry", ["extract", "convert", "probe", "finetune", "pretrain --init"])
def test_every_entry_point_refuses_a_hostile_checkpoint_in_one_line(tmp_path, hostile, study, capsys, entry):
    path, marker = hostile
    out = tmp_path / "out"
    code = cli_main(entry_points(path, study, out)[entry])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert str(path) in errors[0] and "refused" in errors[0] and "system" in errors[0]
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_restricted():
    """A torch.load outside sslam/model/checkpoints/unpickler.py must pass weights_only=True (training snapshots)."""
    offenders = []
    for source in (REPO / "sslam").rglob("*.py"):
        if source.name == "unpickler.py":
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                weights_only = {k.arg: k.value for k in node.keywords}.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    offenders.append(f"{source.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"unrestricted torch.load at {offenders}"


# ------------------------------------------------------------------- small files stating huge sizes (issue 18.3)
LOAD = """
from sslam.model.checkpoints.read import load_encoder
from sslam.model.checkpoints.settings import input_settings
from sslam.model.checkpoints.read import read_checkpoint
from sslam.runtime.errors import SslamError
try:
    loaded = read_checkpoint({path!r})
    input_settings(loaded)
    load_encoder({path!r})
    print("loaded")
except SslamError as error:
    print("refused:", error)
"""


def bomb_files(folder):
    """name -> (path, the words of its one-line refusal)."""
    import bombs
    from embed_helpers import tiny_encoder

    encoder = tiny_encoder()
    long_input = bombs.max_length_folder(folder / "long_input", encoder, max_length=encoder.config.max_time_patches)
    config = json.loads((long_input / "config.json").read_text())
    (long_input / "config.json").write_text(json.dumps({**config, "target_length": 2_000_000}))
    return {
        "max_length 1e8": (bombs.max_length_folder(folder / "max_length", encoder, 1e8),
                           "max_time_patches: must be [1, 4096], got 100000000"),
        "max_length 2e6": (bombs.max_length_folder(folder / "max_length2", encoder, 2e6),
                           "max_time_patches: must be [1, 4096], got 2000000"),
        "target_length 2e6": (long_input, "target_length must be in [1, 65536], got 2000000"),
        "stride-0 head": (bombs.stride_zero_checkpoint(folder / "stride0.pt", encoder),
                          "head weight 'head.weight' is a (40000, 40000) view of 4 stored bytes"),
        "bytearray(2**31)": (bombs.bytearray_pickle(folder / "bytes.pt"), "bytearray(2147483648) would allocate"),
        "numpy _reconstruct": (bombs.array_pickle(folder / "array.pt"), "an array of shape (2147483648,)"),
        "legacy storage": (bombs.legacy_storage_bomb(folder / "legacy.pt"), "a tensor storage of 40,000,000,000 bytes"),
        "deflated archive": (bombs.deflated_checkpoint(folder / "deflated.pt", encoder), "zip entries expand to"),
        "1000 empty blocks": (bombs.deep_checkpoint(folder / "deep.pt"), "cls_token has shape (0,)"),
    }


@pytest.fixture(scope="module")
def bombs_made(tmp_path_factory):
    return bomb_files(tmp_path_factory.mktemp("bombs"))


@pytest.mark.parametrize("name", ["max_length 1e8", "max_length 2e6", "target_length 2e6", "stride-0 head",
                                  "bytearray(2**31)", "numpy _reconstruct", "legacy storage", "deflated archive",
                                  "1000 empty blocks"])
def test_a_checkpoint_stating_a_huge_size_is_refused_in_one_line_within_a_gigabyte(bombs_made, name):
    """Each file is at most a few MB and made the reader allocate 2 to 64 GB (a traceback under a cap, an OOM kill
    without); now it is refused in one line before the allocation, in a process capped at its imports + 1 GiB."""
    from capped import run_capped

    path, words = bombs_made[name]
    run = run_capped(LOAD.format(path=str(path)), preamble="import sslam.model.checkpoints.read")
    assert run.returncode == 0 and run.stdout.strip().startswith("refused:"), run.describe()
    assert words in run.stdout and len(run.stdout.strip().splitlines()) == 1, run.describe()
    assert run.growth < 2**30, run.describe()


def test_the_size_guards_keep_every_real_checkpoint_readable(tmp_path, tiny_config):
    """Byte strings, arrays and storages of the sizes real files have still load through the guards."""
    encoder = AudioEncoder(tiny_config)
    extra = {"blob": bytes(1000), "buffer": bytearray(b"abc"), "array": np.arange(100_000, dtype=np.float32)}
    path = tmp_path / "own.pt"
    torch.save(own_checkpoint(encoder, extra=extra), path)
    assert read_checkpoint(path).meta["step"] == 3
    legacy = tmp_path / "legacy.pt"
    torch.save(own_checkpoint(encoder), legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(legacy).student["patch_embed.weight"], encoder.state_dict()["patch_embed.weight"])


@pytest.mark.parametrize("changes", [{}, {"qkv_bias": False}, {"mlp_ratio": 2.5, "depth": 3}])
def test_the_shapes_compared_before_building_are_the_models(tiny_config, changes):
    from dataclasses import replace

    from sslam.model.checkpoints.read import encoder_state_shapes

    config = replace(tiny_config, **changes)
    assert encoder_state_shapes(config) == {key: tuple(value.shape) for key, value in
                                            AudioEncoder(config).state_dict().items()}


def test_a_positional_table_beyond_its_limit_is_refused(tiny_config):
    from dataclasses import asdict

    from sslam.runtime.configuration import from_dict

    with pytest.raises(SslamError, match="positional table of 4096 × 64 patches"):
        from_dict(EncoderConfig, {**asdict(tiny_config), "embed_dim": 1024, "num_heads": 16, "max_time_patches": 4096,
                                  "num_mel_bins": 1024}, where="model.encoder")
