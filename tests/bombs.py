"""Small files that state huge sizes (issue 18): the builders the memory tests and benchmarks/size_bombs.py share.

Each one is a few kB to a few MB on disk and made a reader allocate gigabytes before any check.
"""
from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import soundfile
import torch


def tone_file(path: Path, sample_rate: int, seconds: float = 0.2, frequency: float = 440.0) -> Path:
    """A 16-bit WAV of a tone; at 48,017 Hz and 0.2 s it is 19 kB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    time_axis = np.arange(int(seconds * sample_rate)) / sample_rate
    soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * frequency * time_axis)).astype(np.float32), sample_rate,
                    subtype="PCM_16")
    return path


def odd_rate_manifest(folder: Path, odd_rates=(48017,), good: int = 9) -> Path:
    """`good` 16-kHz clips plus one clip per odd rate, as a canonical manifest (unlabeled)."""
    from sslam.data.manifest import Manifest, write_manifest

    paths = [tone_file(folder / f"good{i}.wav", 16000, 0.5, 220.0 * (i + 1)) for i in range(good)]
    paths += [tone_file(folder / f"odd{rate}.wav", rate) for rate in odd_rates]
    table = pd.DataFrame({"clip_id": [p.stem for p in paths], "path": [str(p) for p in paths],
                          "split": ["unlabeled"] * len(paths)})
    write_manifest(Manifest(table), folder / "manifest.tsv")
    return folder / "manifest.tsv"


def row_bomb_shard(good_shard: Path, out: Path, rows: int = 10**9) -> Path:
    """A copy of a real shard whose fbank dataset declares `rows` clips (unwritten chunks cost no disk)."""
    shutil.copy(good_shard, out)
    with h5py.File(out, "r+") as shard:
        shard["fbank"].resize(rows, axis=0)
    return out


def max_length_folder(folder: Path, encoder, max_length: float = 1e8) -> Path:
    """A Hugging Face-style model folder (EAT layout, no sslam metadata) whose config.json states `max_length`."""
    from safetensors.torch import save_file

    from embed_helpers import eat_config, eat_layout_state

    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value for key, value in eat_layout_state(encoder).items() if "fixed_positional_encoder" not in key}
    save_file({key: value.contiguous() for key, value in state.items()}, str(folder / "model.safetensors"))
    config = eat_config(encoder.config)
    config["max_length"] = int(max_length) if float(max_length).is_integer() else max_length
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def stride_zero_checkpoint(path: Path, encoder, size: int = 40000) -> Path:
    """A project checkpoint whose head weight is one float viewed as a size × size matrix (stride 0)."""
    import dataclasses

    huge = torch.zeros(1).expand(size, size)
    torch.save({"format": "sslam", "version": 1, "model": {"encoder": dataclasses.asdict(encoder.config)},
                "student": encoder.state_dict(), "head": {"head.weight": huge, "head.bias": torch.zeros(1).expand(size)}},
               path)
    return path


def bytearray_pickle(path: Path, size: int = 2**31) -> Path:
    """A 79-byte `.pt` (legacy pickle) whose only content is bytearray(size)."""
    class Bomb:
        def __reduce__(self):
            return bytearray, (size,)

    path.write_bytes(pickle.dumps(Bomb(), protocol=2))
    return path


def deflated_checkpoint(path: Path, encoder, size: int = 4000) -> Path:
    """A project checkpoint re-zipped with deflate (torch reads it): a size × size zero head takes size²/1000
    bytes on disk, so a 2-MB file would expand to 1.6 GB at size 20,000. The default keeps the test's own
    memory small; the refusal depends on the expansion ratio, not on the size."""
    import dataclasses

    buffer = io.BytesIO()
    torch.save({"format": "sslam", "version": 1, "model": {"encoder": dataclasses.asdict(encoder.config)},
                "student": encoder.state_dict(), "head": {"head.weight": torch.zeros(size, size)}}, buffer)
    buffer.seek(0)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry.filename))
    return path


def deep_checkpoint(path: Path, blocks: int = 1000, width: int = 768) -> Path:
    """A bare encoder state_dict (3.5 MB) naming `blocks` blocks of empty tensors beside a real width-768 patch
    embedding: the reader infers depth 1000 and would build 7 G parameters (28 GB) before comparing shapes."""
    state = {"patch_embed.weight": torch.zeros(width, 1, 16, 16), "patch_embed.bias": torch.zeros(width),
             "cls_token": torch.empty(0), "pre_norm.weight": torch.empty(0), "pre_norm.bias": torch.empty(0)}
    names = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    for block in range(blocks):
        for name in names:
            state[f"blocks.{block}.{name}"] = torch.empty(0)
    state["blocks.0.mlp.fc1.weight"] = torch.empty(4 * width, 0)   # so that the inferred mlp_ratio is 4
    torch.save(state, path)
    return path


def legacy_storage_bomb(path: Path, numel: int = 10**10) -> Path:
    """A legacy-format (pre-zip) torch file whose one storage declares `numel` floats (40 GB) and holds 4 bytes:
    torch allocates the declared size before it reads any data."""
    import sys

    marker = object()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel, None) if obj is marker else None

    buffer = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": sys.byteorder == "little",
                                                   "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, buffer, protocol=2)
    Pickler(buffer, protocol=2).dump({"weight": marker})
    pickle.dump(["0"], buffer, protocol=2)
    buffer.write((1).to_bytes(8, "little") + b"\x00" * 4)
    path.write_bytes(buffer.getvalue())
    return path


def array_pickle(path: Path, elements: int = 2**31) -> Path:
    """A pickle asking numpy's `_reconstruct` for an array of `elements` bytes before any data arrives."""
    from numpy._core.multiarray import _reconstruct

    class Bomb:
        def __reduce__(self):
            return _reconstruct, (np.ndarray, (elements,), b"b")

    path.write_bytes(pickle.dumps({"model": Bomb()}, protocol=2))
    return path
