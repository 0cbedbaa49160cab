"""AudioSet polyphony analysis (paper Appendix B.1) on a hand-made ontology, and on the real CSVs."""
import json
from pathlib import Path

import pytest

from sslam.cli import main
from sslam.data.adapters.audioset import OntologyNode
from sslam.data.polyphony import OntologyGraph, distinct_events, polyphony_by_level

SHARED = Path("/work/shared/data/audioset")

# R (abstract) -> A, B;  A -> A1, A2;  A1 -> X;  M -> X (X has two parents);  B -> B1
EDGES = {"R": ["A", "B"], "A": ["A1", "A2"], "A1": ["X"], "M": ["X"], "B": ["B1"]}
NODES = ["R", "A", "B", "A1", "A2", "X", "M", "B1"]
# clip labels -> hand-counted distinct events for grouping (components, greedy) at levels 1, 2, 3
CLIPS = [
    (["A", "A1"], {1: (1, 1), 2: (1, 1), 3: (1, 1)}),               # parent + child
    (["A1", "A2"], {1: (2, 2), 2: (2, 2), 3: (2, 2)}),              # siblings stay distinct
    (["A", "X"], {1: (2, 2), 2: (1, 1), 3: (1, 1)}),                # grandparent: related from L=2
    (["X", "M"], {1: (1, 1), 2: (1, 1), 3: (1, 1)}),                # X's second parent
    (["A", "A1", "X"], {1: (1, 2), 2: (1, 1), 3: (1, 1)}),          # chain: greedy keeps A and X at L=1
    (["B1", "X", "M", "A2"], {1: (3, 3), 2: (3, 3), 3: (3, 3)}),
    (["A"], {1: (1, 1), 2: (1, 1), 3: (1, 1)}),
    (["B1", "A"], {1: (2, 2), 2: (2, 2), 3: (2, 2)}),              # linked only through abstract R
]


@pytest.fixture
def graph():
    return OntologyGraph({n: OntologyNode(n, n, tuple(EDGES.get(n, ())), ("abstract",) if n == "R" else ()) for n in NODES})


def test_hand_counted_events(graph):
    for labels, expected in CLIPS:
        for level, (components, greedy) in expected.items():
            assert distinct_events(labels, graph, level, "components") == components, (labels, level)
            assert distinct_events(labels, graph, level, "greedy") == greedy, (labels, level)
    assert distinct_events(["A", "A"], graph, 1) == 1


def test_percentages_per_level(graph):
    label_lists = [labels for labels, _ in CLIPS]
    components = polyphony_by_level(label_lists, graph, [1, 2, 3])
    assert [r.polyphonic for r in components] == [4, 3, 3]  # clips with >= 2 events, counted by hand
    assert components[0].percent == pytest.approx(50.0)
    greedy = polyphony_by_level(label_lists, graph, [1, 2], grouping="greedy")
    assert [r.polyphonic for r in greedy] == [5, 3]


def test_cli_on_tiny_files(tmp_path, capsys):
    ontology = [{"id": n, "name": n, "child_ids": EDGES.get(n, []), "restrictions": []} for n in NODES]
    (tmp_path / "ontology.json").write_text(json.dumps(ontology))
    rows = "".join(f'clip{i:07d}, 0.000, 10.000, "{",".join(labels)}"\n' for i, (labels, _) in enumerate(CLIPS))
    (tmp_path / "segments.csv").write_text("# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\n" + rows)
    out = tmp_path / "result.json"
    assert main(["polyphony", "--ontology", str(tmp_path / "ontology.json"), "--segments", str(tmp_path / "segments.csv"),
                 "--levels", "1", "2", "--out", str(out)]) == 0
    assert "level 1: 50.0% of 8 clips" in capsys.readouterr().out
    assert [level["polyphonic"] for level in json.loads(out.read_text())["levels"]] == [4, 3]


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared AudioSet metadata not present")
def test_real_csvs_decrease_with_level(tmp_path):
    results = {}
    for grouping in ("components", "greedy"):
        out = tmp_path / f"{grouping}.json"
        assert main(["polyphony", "--ontology", str(SHARED / "ontology.json"), "--segments",
                     str(SHARED / "balanced_train_segments.csv"), str(SHARED / "eval_segments.csv"),
                     "--levels", "1", "2", "3", "4", "--grouping", grouping, "--out", str(out)]) == 0
        results[grouping] = [level["percent"] for level in json.loads(out.read_text())["levels"]]
    for percents in results.values():
        assert all(0 < p < 100 for p in percents)
        assert percents == sorted(percents, reverse=True)  # deeper levels merge more labels (Figure 3)
    # greedy keeps at least the first label of every related group, so it never counts fewer events
    assert all(g >= c for g, c in zip(results["greedy"], results["components"]))
