"""URBAN-SED v2.0.0: Scaper soundscapes with strong (onset, offset, class) annotations.

Layout: `<root>/audio/{train,validate,test}/<name>.wav` and
`<root>/annotations/{train,validate,test}/<name>.txt`, each annotation line
`onset<TAB>offset<TAB>class`. Splits map to train / valid / test.

The paper evaluates polyphony, so it keeps only clips with more than one distinct label
(Appendix B.0.2: 5,268 train and 1,739 evaluation clips remain). `min_distinct_labels` (default
2) is that filter; 0 keeps every clip. `polyphony` = number of distinct classes in the clip.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from sslam.data.adapters.common import add_audio_info, finish, join_labels, read_lines, require_dir
from sslam.data.manifest import Manifest
from sslam.runtime.errors import ManifestError

SPLITS = {"train": "train", "validate": "valid", "test": "test"}
CLASSES = [
    "air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
    "engine_idling", "gun_shot", "jackhammer", "siren", "street_music",
]


def read_annotation(path: Path) -> list[str]:
    """Event classes of one annotation file, in file order (repeats kept)."""
    events = []
    for number, line in enumerate(read_lines(path, "URBAN-SED annotation"), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            onset, offset, label = float(fields[0]), float(fields[1]), fields[2].strip()
        except (ValueError, IndexError):
            raise ManifestError(f"{path}:{number}: expected `onset<TAB>offset<TAB>class`, got {line!r}") from None
        if len(fields) != 3 or offset < onset:
            raise ManifestError(f"{path}:{number}: expected 3 fields with offset >= onset, got {line!r}")
        if label not in CLASSES:
            raise ManifestError(f"{path}:{number}: unknown URBAN-SED class {label!r}")
        events.append(label)
    return events


def build_urbansed(root: Path, min_distinct_labels: int = 2, probe: bool = True) -> Manifest:
    root = require_dir(Path(root), "URBAN-SED root")
    rows = []
    for folder, split in SPLITS.items():
        audio = require_dir(root / "audio" / folder, f"URBAN-SED {folder} audio")
        annotations = require_dir(root / "annotations" / folder, f"URBAN-SED {folder} annotations")
        for wav in sorted(audio.glob("*.wav")):
            annotation = annotations / f"{wav.stem}.txt"
            if not annotation.is_file():
                raise ManifestError(f"{wav}: no annotation file {annotation}")
            distinct = sorted(set(read_annotation(annotation)), key=CLASSES.index)
            rows.append({"clip_id": wav.stem, "path": str(wav), "split": split,
                         "labels": join_labels(distinct), "polyphony": len(distinct)})
    if not rows:
        raise ManifestError(f"{root}: no wav files under audio/{{train,validate,test}}")
    table = pd.DataFrame(rows)
    table = table[table["polyphony"] >= min_distinct_labels].reset_index(drop=True)
    return finish(add_audio_info(table, probe), CLASSES)
