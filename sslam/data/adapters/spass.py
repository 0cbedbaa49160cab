"""SPASS (one of five urban soundscapes) through the official SSLAM fairseq manifests.

The SSLAM repository publishes one fairseq folder per scene (`SPASS_Create_Manifests/
manifest_SPASS_<Scene>/`): `train.tsv`/`eval.tsv` listing `<Scene>_audio_files/<scene>NNNNN.wav`
under the SPASS audio root, `train.lbl`/`eval.lbl` with comma-joined event names (`talk,crowd`),
and `label_descriptors.csv` (`index,name,name`). Each clip's `polyphony` column is its number of
distinct labelled events, which the Degrees-of-Polyphony builder bins.
"""
from __future__ import annotations

from pathlib import Path

from sslam.data.adapters.common import add_audio_info, distinct_label_count, finish, require_dir
from sslam.data.adapters.fairseq import build_fairseq
from sslam.data.manifest import Manifest
from sslam.runtime.errors import ManifestError

SCENES = ("market", "park", "square", "street", "waterfront")


def _manifest_folder(root: Path, scene: str) -> Path:
    candidates = [root / f"spass_{scene}", root / f"manifest_SPASS_{scene.capitalize()}", root / f"manifest_SPASS_{scene}"]
    for candidate in candidates:
        if (candidate / "train.tsv").is_file():
            return candidate
    raise ManifestError(f"no SPASS {scene} manifests (train.tsv) in any of {[str(c) for c in candidates]}")


def build_spass(
    root: Path, scene: str, manifest_dir: str | None = None, audio_root: str | None = None, probe: bool = False
) -> Manifest:
    """`root` holds the scene's manifest folder (`spass_<scene>` or `manifest_SPASS_<Scene>`) and,
    usually, the audio (`<Scene>_audio_files/`); `audio_root` overrides where the audio is."""
    if scene not in SCENES:
        raise ManifestError(f"unknown SPASS scene {scene!r}; expected one of {list(SCENES)}")
    root = require_dir(Path(root), "SPASS root")
    folder = require_dir(Path(manifest_dir), "SPASS manifest folder") if manifest_dir else _manifest_folder(root, scene)
    audio_folder = f"{scene.capitalize()}_audio_files"
    if audio_root is None and (root / audio_folder).is_dir():
        audio_root = str(root)
    manifest = build_fairseq(folder, splits=["train", "eval"], audio_root=audio_root)
    table = manifest.table
    wrong_scene = table[~table["clip_id"].str.startswith(audio_folder + "/")]
    if len(wrong_scene):
        raise ManifestError(f"{folder}: clip {wrong_scene['clip_id'].iloc[0]!r} is not in {audio_folder}/ (scene {scene})")
    if probe:
        table = add_audio_info(table, probe=True)
    table = table.assign(scene=scene, polyphony=table["labels"].map(distinct_label_count))
    return finish(table, manifest.classes, manifest.class_names)
