"""Published numbers of the SSLAM paper, to print beside ours as clearly labelled "(paper)" rows.

Source: Tariq et al., "SSLAM: Enhancing Self-Supervised Models with Audio Mixtures for Polyphonic
Soundscapes", ICLR 2025 (shared/paper/sslam_iclr2025.txt). Every value is copied by hand from the
table named in its `citation`, in percent (mAP for AudioSet and the polyphonic sets, accuracy for
ESC-50 and Speech Commands). Keys are this project's benchmark names (config/config.yaml) and
variant names, so a study that uses those names lines up with the paper cell by cell.

Structure: PAPER_TABLES[table] = PaperTable(citation, {regime: {row: {column: value}}}). Columns are
benchmark names, or polyphony bin labels for Table 3; rows are variant names (or the paper's row
label for ablations and Table 4, which a study maps onto its own model ids with `paper_rows`).
Besides the numbered tables, `appendix_c` holds the one result the paper gives for the MixIT
concept-separation variant (Appendix C).
"""
from __future__ import annotations

from dataclasses import dataclass

SPASS = ["spass_square", "spass_park", "spass_waterfront", "spass_street", "spass_market"]
TABLE2_COLUMNS = SPASS + ["idmt_desed_fl", "urbansed", "as20k"]
# Labels as the polyphony_bins adapter writes them (sslam.data.adapters.polyphony_bins.polyphony_bins()).
POLYPHONY_BINS = ["{2,3}", "{4,5}", "{6,7}", "{8,9}", "{10,11}", "{12,13}", "{14+}"]


@dataclass(frozen=True)
class PaperTable:
    citation: str
    cells: dict[str, dict[str, dict[str, float]]]  # regime -> row -> column -> value (percent)
    std: dict[str, dict[str, dict[str, float]]] | None = None  # same shape, where the paper gives ± std


def _row(columns: list[str], values: list[float]) -> dict[str, float]:
    if len(columns) != len(values):
        raise ValueError(f"{len(values)} values for {len(columns)} columns")
    return dict(zip(columns, values))


_TABLE1 = ["as2m", "as20k", "esc50", "ks2", "ks1"]

PAPER_TABLES: dict[str, PaperTable] = {
    "table1": PaperTable(
        "SSLAM paper Table 1 (audio SSL benchmarks, fine-tuning; EAT row as reported there, KS1 not reported for EAT)",
        {"finetune": {
            "EAT": {"as2m": 48.6, "as20k": 40.2, "esc50": 95.9, "ks2": 98.3},
            "SSLAM": _row(_TABLE1, [50.2, 40.9, 96.2, 98.1, 98.8]),
        }},
    ),
    "table2": PaperTable(
        "SSLAM paper Table 2 (polyphonic datasets, mAP)",
        {
            "linear": {
                "MB-UA": _row(TABLE2_COLUMNS, [60.1, 59.7, 55.2, 63.7, 62.8, 75.8, 71.3, 13.9]),
                "MB-PMA": _row(TABLE2_COLUMNS, [63.1, 63.5, 58.5, 66.5, 67.4, 78.4, 70.9, 16.1]),
                "MB-UA-PMA": _row(TABLE2_COLUMNS, [62.7, 63.5, 58.2, 66.6, 66.6, 77.7, 70.9, 15.2]),
                "SSLAM": _row(TABLE2_COLUMNS, [64.2, 64.2, 59.5, 67.4, 68.5, 77.8, 71.4, 16.9]),
            },
            "finetune": {
                "MB-UA": _row(TABLE2_COLUMNS, [84.4, 78.4, 80.1, 81.4, 89.7, 94.4, 90.9, 40.4]),
                "MB-PMA": _row(TABLE2_COLUMNS, [85.1, 80.0, 82.0, 82.2, 90.8, 94.4, 90.9, 40.6]),
                "MB-UA-PMA": _row(TABLE2_COLUMNS, [85.0, 79.7, 82.0, 82.2, 90.5, 94.4, 90.9, 40.7]),
                "SSLAM": _row(TABLE2_COLUMNS, [85.6, 80.5, 82.6, 82.2, 90.2, 94.5, 90.9, 40.9]),
            },
        },
    ),
    "table3": PaperTable(
        "SSLAM paper Table 3 (Degrees of Polyphony dataset, mAP per bin of distinct sound events)",
        {
            "linear": {
                "MB-UA": _row(POLYPHONY_BINS, [61.5, 69.4, 45.8, 53.5, 58.3, 61.6, 66.7]),
                "MB-PMA": _row(POLYPHONY_BINS, [58.6, 70.0, 50.7, 57.2, 61.3, 64.8, 67.6]),
                "MB-UA-PMA": _row(POLYPHONY_BINS, [58.2, 70.0, 49.8, 56.9, 61.1, 64.7, 67.9]),
                "SSLAM": _row(POLYPHONY_BINS, [60.6, 70.6, 53.2, 58.7, 63.0, 66.1, 69.7]),
            },
            "finetune": {
                "MB-UA": _row(POLYPHONY_BINS, [87.3, 86.5, 69.5, 81.5, 82.5, 80.7, 78.1]),
                "MB-PMA": _row(POLYPHONY_BINS, [87.3, 86.9, 71.4, 83.0, 83.4, 82.0, 79.3]),
                "MB-UA-PMA": _row(POLYPHONY_BINS, [87.2, 86.4, 70.3, 82.7, 83.4, 81.8, 78.8]),
                "SSLAM": _row(POLYPHONY_BINS, [87.7, 86.9, 71.9, 83.3, 83.8, 82.2, 79.4]),
            },
        },
    ),
    "table4": PaperTable(
        "SSLAM paper Table 4 (partial vs full mixing, AS-20K fine-tuning mAP)",
        {"finetune": {
            "Stage 1 with unmixed audio": {"as20k": 40.2},
            "Stage 1 with mixed audio": {"as20k": 39.0},
            "Stage 1 with mixed audio 75% of updates": {"as20k": 39.4},
            "Stage 1 with partial mixed audio": {"as20k": 39.9},
            "Stage 2 with unmixed audio": {"as20k": 40.4},
            "Stage 2 with mixed audio 75% of updates": {"as20k": 40.4},
            "Stage 2 with partial mixed audio": {"as20k": 40.6},
        }},
    ),
    "table5": PaperTable(
        "SSLAM paper Table 5 (effect of the global loss on UM/PM/SRL, local loss on all three; AS-20K fine-tuning mAP)",
        {"finetune": {
            "global: none": {"as20k": 40.4},
            "global: UM": {"as20k": 40.7},
            "global: UM+PM": {"as20k": 40.9},
            "global: UM+PM+SRL": {"as20k": 40.6},
        }},
    ),
    "table6": PaperTable(
        "SSLAM paper Table 6 (top-k teacher layers for the targets; AS-20K fine-tuning mAP)",
        {"finetune": {
            "Global:12, Local:12": {"as20k": 40.5},
            "Global:1, Local:12": {"as20k": 40.6},
            "Global:3, Local:3": {"as20k": 39.3},
            "Global:1, Local:3": {"as20k": 39.4},
            "Global:1, Local:1": {"as20k": 38.8},
        }},
    ),
    "table9": PaperTable(
        "SSLAM paper Table 9 (Appendix D: MB-PMA vs MB-UA-PMA on monophonic sets and AS-20K, fine-tuning; "
        "accuracy for ESC-50 and KS2, mAP for AS-20K)",
        {"finetune": {
            "MB-PMA": {"esc50": 95.5, "ks2": 97.9, "as20k": 40.6},
            "MB-UA-PMA": {"esc50": 96.2, "ks2": 98.0, "as20k": 40.7},
        }},
    ),
    "appendix_c": PaperTable(
        "SSLAM paper Appendix C (concept separation with the MixIT loss, Eq. 6: AS-20K fine-tuning mAP, "
        "MixIT 39.9 vs SSLAM 40.9)",
        {"finetune": {
            "MixIT": {"as20k": 39.9},
            "SSLAM": {"as20k": 40.9},
        }},
    ),
    "table10": PaperTable(
        "SSLAM paper Table 10 (input mixing strategies; AS-20K fine-tuning mAP)",
        {"finetune": {
            "log-mel element-wise max": {"as20k": 40.9},
            "log-mel average": {"as20k": 40.8},
            "waveform average": {"as20k": 40.4},
        }},
    ),
    "table11": PaperTable(
        "SSLAM paper Table 11 (SRL feature aggregation; AS-20K fine-tuning mAP)",
        {"finetune": {
            "feature averaging": {"as20k": 40.9},
            "element-wise max of features": {"as20k": 40.7},
        }},
    ),
}

# Table 12 (Appendix F) repeats Table 2's SPASS columns for MB-UA and SSLAM as mean ± std over 3 seeds.
PAPER_TABLES["table12"] = PaperTable(
    "SSLAM paper Table 12 (SPASS, mean ± std over three runs, mAP)",
    {
        "linear": {"MB-UA": _row(SPASS, [60.15, 59.72, 55.23, 63.50, 62.69]),
                   "SSLAM": _row(SPASS, [64.25, 64.25, 59.51, 67.46, 68.55])},
        "finetune": {"MB-UA": _row(SPASS, [84.40, 78.38, 79.81, 81.47, 89.91]),
                     "SSLAM": _row(SPASS, [85.82, 80.45, 82.31, 82.35, 90.51])},
    },
    std={
        "linear": {"MB-UA": _row(SPASS, [0.01, 0.08, 0.01, 0.14, 0.11]),
                   "SSLAM": _row(SPASS, [0.07, 0.07, 0.09, 0.09, 0.06])},
        "finetune": {"MB-UA": _row(SPASS, [0.09, 0.29, 0.54, 0.17, 0.23]),
                     "SSLAM": _row(SPASS, [0.17, 0.16, 0.26, 0.19, 0.44])},
    },
)


def paper_cells(table: str, regime: str) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(row -> column -> published mean, same for the published std) for one regime; empty when
    the paper has no such table or regime."""
    known = PAPER_TABLES.get(table)
    if known is None:
        return {}, {}
    return known.cells.get(regime, {}), (known.std or {}).get(regime, {})
