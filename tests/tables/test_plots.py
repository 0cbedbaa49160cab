"""Figures: Stage 2 continues Stage 1's x axis, per-term panels, readable log ticks, integer levels in
Figure 3, dodged error bars."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sslam.runtime.errors import SslamError
from sslam.tables.layouts import TableSpec
from sslam.tables.plots import (audioset_polyphony_figure, log_ticks, polyphony_figure, pretrain_figure,
                                readable_log_axis, run_model)


def write_jsonl(path, steps, **terms):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as stream:
        for step in steps:
            stream.write(json.dumps({"step": step, "lr": 1e-4, **{k: f(step) for k, f in terms.items()}}) + "\n")
    return path


@pytest.mark.parametrize("low, high", [(0.41, 0.45), (0.3, 0.9), (0.012, 7.5), (1.0, 1.0), (2e-5, 3e-5)])
def test_log_ticks_are_several_and_inside(low, high):
    ticks = log_ticks(low, high)
    assert len(ticks) >= (1 if low == high else 3)
    assert ticks == sorted(set(ticks))
    assert all(low * 0.95 <= t <= high * 1.05 for t in ticks)


def test_readable_log_axis_labels_several_ticks():
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    values = np.linspace(0.42, 0.47, 20)
    axis.plot(values)
    readable_log_axis(axis, values)
    figure.canvas.draw()
    labels = [t.get_text() for t in axis.get_yticklabels() if t.get_text()]
    low, high = axis.get_ylim()
    visible = [t for t in axis.get_yticks() if low <= t <= high]
    assert axis.get_yscale() == "log" and len(visible) >= 3 and len(labels) >= 3
    plt.close(figure)


def test_stage2_continues_stage1_and_terms_get_panels(tmp_path):
    stage1 = write_jsonl(tmp_path / "pretrain" / "stage1" / "metrics.jsonl", range(10, 101, 10),
                         loss=lambda s: 3.0 / s ** 0.5, local_unmixed=lambda s: 2.0 / s ** 0.5,
                         global_unmixed=lambda s: 1.0 / s ** 0.5)
    sslam = write_jsonl(tmp_path / "pretrain" / "stage2" / "SSLAM" / "metrics.jsonl", range(5, 51, 5),
                        loss=lambda s: 0.5, local_unmixed=lambda s: 0.2, local_mixed=lambda s: 0.25,
                        global_unmixed=lambda s: 0.1, global_mixed=lambda s: 0.12, srl_local=lambda s: 0.05)
    variant_stage1 = write_jsonl(tmp_path / "other" / "s1.jsonl", range(10, 41, 10), loss=lambda s: 1.0)
    variant_stage2 = write_jsonl(tmp_path / "other" / "s2.jsonl", range(1, 4), loss=lambda s: 0.9)
    figure = pretrain_figure([stage1, sslam, f"stage1@mixed={variant_stage1}", f"SSLAM@mixed={variant_stage2}"])
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == ["total pretraining loss", "local loss (masked patches)", "global loss (CLS)",
                      "source retention loss (SRL)"]
    lines = {line.get_label(): line.get_xdata() for line in figure.axes[0].lines}
    assert lines["Stage 1 (EAT-style baseline)"][-1] == 100
    assert lines["Stage 2: SSLAM"][0] == 105 and lines["Stage 2: SSLAM"][-1] == 150   # 100 + its own steps
    assert lines["Stage 2: SSLAM@mixed"][0] == 41                                      # its own Stage 1 ended at 40
    local = {line.get_label(): line.get_linestyle() for line in figure.axes[1].lines}
    assert local["Stage 2: SSLAM: local_mixed"] != local["Stage 2: SSLAM: local_unmixed"]
    assert [line.get_label() for line in figure.axes[3].lines if not line.get_label().startswith("_")] == [
        "Stage 2: SSLAM: srl_local"]
    boundaries = [line.get_xdata()[0] for line in figure.axes[0].lines if line.get_label().startswith("_")]
    assert sorted(set(boundaries)) == [40, 100]   # a dotted line where each Stage 2 starts


def test_run_names_from_paths_and_bad_lines(tmp_path):
    assert run_model("r/pretrain/stage1/metrics.jsonl")[0] == "stage1"
    assert run_model("r/pretrain/stage1@mixed/metrics.jsonl")[0] == "stage1@mixed"
    assert run_model("r/pretrain/stage1/mixed/metrics.jsonl")[0] == "stage1@mixed"
    assert run_model("r/pretrain/stage2/MB-UA@mixed/metrics.jsonl")[0] == "MB-UA@mixed"
    broken = tmp_path / "stage1" / "metrics.jsonl"
    broken.parent.mkdir()
    broken.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    with pytest.raises(SslamError, match=r"metrics.jsonl:2: not a JSON line"):
        pretrain_figure([broken])


def test_figure3_levels_are_integers(tmp_path):
    path = tmp_path / "polyphony.json"
    path.write_text(json.dumps({"levels": [{"level": level, "percent": p, "clips": 10}
                                           for level, p in [(1, 42.5), (2, 37.8), (3, 36.4), (4, 35.6)]]}))
    figure = audioset_polyphony_figure(path)
    axis = figure.axes[0]
    assert list(axis.get_xticks()) == [1, 2, 3, 4]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["1", "2", "3", "4"]
    path.write_text("{}")
    with pytest.raises(SslamError, match="not a `sslam polyphony` result"):
        audioset_polyphony_figure(path)
    with pytest.raises(SslamError, match="not found"):
        audioset_polyphony_figure(path.with_name("missing.json"))


def test_polyphony_error_bars_are_dodged(tmp_path):
    spec = TableSpec(name="t3", kind="polyphony_bins", benchmarks=["p"], regimes=["linear"])
    rows = [dict(block="linear", model=model, label=model, source="ours", column=b, benchmark="p", key=b,
                 mean=50.0 + i, std=2.0, n=3, seeds="0 1 2", clips=8)
            for i, model in enumerate(["stage1", "SSLAM"]) for b in ["{2,3}", "{4,5}"]]
    figure = polyphony_figure(pd.DataFrame(rows), spec)
    axis = figure.axes[0]
    positions = [line.get_xdata() for line in axis.lines if len(line.get_xdata()) == 2 and line.get_marker() == "o"]
    assert len(positions) == 2 and not np.allclose(positions[0], positions[1])   # side by side, not on top
    assert [t.get_text() for t in axis.get_xticklabels()] == ["{2,3}\n8 clips", "{4,5}\n8 clips"]
