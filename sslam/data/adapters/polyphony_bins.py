"""Degrees of Polyphony: clips grouped by their number of distinct sound events.

Paper Table 3 / Appendix B.0.2: test subsets {2,3}, {4,5}, {6,7}, {8,9}, {10,11}, {12,13}, {14+}
drawn from SPASS and URBAN-SED. Any canonical manifest with a `polyphony` column (number of
distinct events per clip: the SPASS, URBAN-SED, DESED-FL adapters and the synthetic corpus all
write one) gets a `polyphony_bin` column; clips with fewer than two events are not polyphonic
and get no bin (dropped by the builder unless `keep_monophonic`).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from sslam.data.adapters.common import finish, require_dir
from sslam.data.manifest import Manifest, read_manifest
from sslam.runtime.errors import ConfigError, ManifestError

PAPER_MAX_BIN = 14
NO_BIN = ""
# The sources name their held-out split differently (SPASS: `eval`, URBAN-SED: `test`); the merged
# benchmark pools them under one name so that one `eval_split` selects every source's test clips.
HELD_OUT_SPLITS = {"test": "eval", "eval": "eval"}


def _check_max_bin(max_bin: int) -> None:
    # Bins are consecutive pairs starting at 2, so the open-ended bin must start on an even count.
    if max_bin < 2 or max_bin % 2:
        raise ConfigError(f"max_bin must be an even number >= 2, got {max_bin}")


def polyphony_bins(max_bin: int = PAPER_MAX_BIN) -> list[str]:
    """Bin labels in order: ['{2,3}', '{4,5}', ..., '{12,13}', '{14+}'] for the paper's max_bin=14."""
    _check_max_bin(max_bin)
    return [f"{{{low},{low + 1}}}" for low in range(2, max_bin, 2)] + [f"{{{max_bin}+}}"]


def polyphony_bin(events: int, max_bin: int = PAPER_MAX_BIN) -> str:
    """The bin label of a clip with `events` distinct events ('' below two events)."""
    _check_max_bin(max_bin)
    if events < 2:
        return NO_BIN
    if events >= max_bin:
        return f"{{{max_bin}+}}"
    low = events - events % 2
    return f"{{{low},{low + 1}}}"


def add_polyphony_bins(manifest: Manifest, max_bin: int = PAPER_MAX_BIN) -> Manifest:
    if "polyphony" not in manifest.table.columns:
        raise ManifestError("manifest has no `polyphony` column (number of distinct events per clip)")
    table = manifest.table.assign(
        polyphony_bin=manifest.table["polyphony"].astype(int).map(lambda n: polyphony_bin(n, max_bin))
    )
    return Manifest(table, list(manifest.classes), list(manifest.class_names), manifest.root)


def build_polyphony_bins(
    root: Path, sources: list[str] | None = None, max_bin: int = PAPER_MAX_BIN, keep_monophonic: bool = False
) -> Manifest:
    """Merge canonical manifests (SPASS scenes, URBAN-SED, ...) into one binned manifest.

    `sources` are manifest files relative to `root` (default: every `*.tsv` manifest in root).
    Clip ids become `<source stem>/<clip id>`; held-out splits (`test`, `eval`) become `eval`; the class list is the union of the sources' lists,
    in source order, so each source keeps its own classes' relative order.
    """
    root = require_dir(Path(root), "Degrees-of-Polyphony source folder")
    if sources is None:
        paths = sorted(p for p in root.glob("*.tsv") if not p.name.endswith(".classes.tsv"))
    else:
        paths = [Path(s) if Path(s).is_absolute() else root / s for s in sources]
    if not paths:
        raise ManifestError(f"{root}: no source manifests (*.tsv) found")
    tables, classes, names = [], [], []
    for path in paths:
        source = read_manifest(path)
        if "polyphony" not in source.table.columns:
            raise ManifestError(f"{path}: no `polyphony` column; build it with an adapter that counts events")
        table = source.table.assign(
            clip_id=path.stem + "/" + source.table["clip_id"],
            path=[str(source.audio_path(row).resolve()) for row in range(len(source))],
            source=path.stem,
            split=source.table["split"].replace(HELD_OUT_SPLITS),
        )
        tables.append(table)
        for label, name in zip(source.classes, source.class_names):
            if label not in classes:
                classes.append(label)
                names.append(name)
    merged = add_polyphony_bins(finish(pd.concat(tables, ignore_index=True), classes, names), max_bin)
    if not keep_monophonic:
        merged = merged.subset(merged.table["polyphony_bin"] != NO_BIN)
    return merged
