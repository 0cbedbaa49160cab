"""Degrees-of-Polyphony bins (paper Table 3) and the builder that merges polyphony manifests."""
import pandas as pd
import pytest

from sslam.data.adapters.polyphony_bins import add_polyphony_bins, build_polyphony_bins, polyphony_bin, polyphony_bins
from sslam.data.manifest import Manifest, read_manifest, write_manifest
from sslam.runtime.errors import ConfigError, ManifestError


def test_paper_bins():
    assert polyphony_bins() == ["{2,3}", "{4,5}", "{6,7}", "{8,9}", "{10,11}", "{12,13}", "{14+}"]
    assert polyphony_bins(4) == ["{2,3}", "{4+}"]
    assert [polyphony_bin(n) for n in (0, 1, 2, 3, 4, 13, 14, 22)] == ["", "", "{2,3}", "{2,3}", "{4,5}", "{12,13}", "{14+}", "{14+}"]
    for bad in (3, 0):
        with pytest.raises(ConfigError):
            polyphony_bins(bad)


def make_source(path, clips, classes, split="test"):
    table = pd.DataFrame({
        "clip_id": [c[0] for c in clips], "path": [f"audio/{c[0]}.wav" for c in clips], "split": split,
        "labels": [";".join(c[1]) for c in clips], "polyphony": [len(set(c[1])) for c in clips],
    })
    write_manifest(Manifest(table, classes), path)


def test_builder_merges_sources_and_drops_monophonic(tmp_path):
    make_source(tmp_path / "spass_market.tsv", [("m1", ["talk", "bird"]), ("m2", ["talk"])], ["talk", "bird"],
                split="eval")
    make_source(tmp_path / "urbansed.tsv", [("u1", ["siren", "dog_bark", "talk", "drilling"])],
                ["dog_bark", "siren", "drilling", "talk"])
    merged = build_polyphony_bins(tmp_path)
    assert merged.table["clip_id"].tolist() == ["spass_market/m1", "urbansed/u1"]
    assert merged.table["polyphony_bin"].tolist() == ["{2,3}", "{4,5}"]
    assert merged.table["split"].tolist() == ["eval", "eval"]  # SPASS `eval` and URBAN-SED `test` pooled
    assert merged.classes == ["talk", "bird", "dog_bark", "siren", "drilling"]
    assert merged.table["path"][0] == str((tmp_path / "audio" / "m1.wav").resolve())
    everything = build_polyphony_bins(tmp_path, sources=["spass_market.tsv"], keep_monophonic=True, max_bin=2)
    assert everything.table["polyphony_bin"].tolist() == ["{2+}", ""]
    write_manifest(everything, tmp_path / "out" / "bins.tsv")
    assert read_manifest(tmp_path / "out" / "bins.tsv").table["polyphony_bin"].fillna("").tolist() == ["{2+}", ""]


def test_any_manifest_with_a_polyphony_column(tmp_path):
    table = pd.DataFrame({"clip_id": ["a", "b"], "path": ["a.wav", "b.wav"], "polyphony": [15, 6]})
    assert add_polyphony_bins(Manifest(table)).table["polyphony_bin"].tolist() == ["{14+}", "{6,7}"]
    with pytest.raises(ManifestError, match="no `polyphony` column"):
        add_polyphony_bins(Manifest(table.drop(columns="polyphony")))
