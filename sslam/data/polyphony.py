"""AudioSet polyphony analysis (paper Appendix B.1, Algorithm 2, Figure 3).

A clip's labels often name one sound at several granularities ("Music", "Musical instrument",
"Guitar"), so a multi-label clip is not necessarily polyphonic. For a hierarchy level L, two
labels of a clip are RELATED when one is an ancestor of the other at most L parent->child steps
apart in ontology.json. Related labels are resolved as follows:

* multiple parents: the ancestors of a label are searched through EVERY parent (a label with two
  parents is related to both lines of ancestors);
* abstract / blacklisted categories: `restrictions` are ignored; such nodes count as steps on the
  path like any other node (abstract ones never occur as labels, so they only link labels);
* siblings and cousins (labels that only share an ancestor) are NOT related;
* grouping `components` (default): related labels are merged transitively and each group counts
  as one event (the count does not depend on label order);
  grouping `greedy`: Algorithm 2 read literally: walk the labels in CSV order, and each label
  still in the set removes its related labels from the set; the survivors are the events.

Why "within L steps" and not "map every label to its ancestor at depth L": the latter would
merge MORE labels at small L (depth 1 = seven top categories) and make the percentage grow
with L, while the paper's Figure 3 falls with L.

A clip is polyphonic at level L when it has at least two distinct events. The paper reports
42.5 / 37.8 / 36.4 / 35.6 % for L = 1..4 on its own AudioSet copy.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sslam.data.adapters.audioset import OntologyNode, read_ontology, read_segments
from sslam.runtime.errors import ConfigError, ManifestError

GROUPINGS = ("components", "greedy")


class OntologyGraph:
    """Parent links of the AudioSet ontology and the 'related within L steps' test."""

    def __init__(self, nodes: dict[str, OntologyNode]):
        self.nodes = nodes
        self.parents: dict[str, set[str]] = {node_id: set() for node_id in nodes}
        for node in nodes.values():
            for child in node.child_ids:
                self.parents[child].add(node.id)
        self._ancestor_cache: dict[tuple[str, int], frozenset[str]] = {}

    def ancestors(self, label: str, max_steps: int) -> frozenset[str]:
        """Every node reachable upwards from `label` in 1..max_steps steps, through all parents."""
        key = (label, max_steps)
        if key not in self._ancestor_cache:
            if label not in self.parents:
                raise ManifestError(f"label id {label!r} is not in the ontology")
            found: set[str] = set()
            frontier = {label}
            for _ in range(max_steps):
                frontier = {parent for node in frontier for parent in self.parents[node]} - found
                found |= frontier
            self._ancestor_cache[key] = frozenset(found)
        return self._ancestor_cache[key]

    def related(self, first: str, second: str, level: int) -> bool:
        return second in self.ancestors(first, level) or first in self.ancestors(second, level)


def distinct_events(labels: Sequence[str], graph: OntologyGraph, level: int, grouping: str = "components") -> int:
    """Number of distinct sound events among one clip's labels at hierarchy level `level`."""
    unique = list(dict.fromkeys(labels))  # drop exact repeats, keep CSV order for `greedy`
    if grouping == "greedy":
        remaining = list(unique)
        for label in unique:
            if label in remaining:
                remaining = [other for other in remaining if other == label or not graph.related(label, other, level)]
        return len(remaining)
    if grouping != "components":
        raise ConfigError(f"unknown grouping {grouping!r}; expected one of {list(GROUPINGS)}")
    group = {label: label for label in unique}  # union-find over this clip's labels

    def root_of(label: str) -> str:
        while group[label] != label:
            label = group[label]
        return label

    for i, first in enumerate(unique):
        for second in unique[i + 1:]:
            if graph.related(first, second, level):
                group[root_of(first)] = root_of(second)
    return len({root_of(label) for label in unique})


@dataclass
class LevelResult:
    level: int
    clips: int
    polyphonic: int  # clips with at least two distinct events

    @property
    def percent(self) -> float:
        return 100.0 * self.polyphonic / self.clips if self.clips else 0.0


def polyphony_by_level(
    label_lists: Iterable[Sequence[str]], graph: OntologyGraph, levels: Sequence[int], grouping: str = "components"
) -> list[LevelResult]:
    label_lists = list(label_lists)
    results = []
    for level in levels:
        if level < 1:
            raise ConfigError(f"hierarchy levels start at 1, got {level}")
        polyphonic = sum(distinct_events(labels, graph, level, grouping) >= 2 for labels in label_lists)
        results.append(LevelResult(level, len(label_lists), polyphonic))
    return results


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--ontology", required=True, help="AudioSet ontology.json")
    parser.add_argument("--segments", required=True, nargs="+", help="segment CSV(s); clips of all files are pooled")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, 4], help="hierarchy levels L (default 1 2 3 4)")
    parser.add_argument("--grouping", choices=GROUPINGS, default="components",
                        help="how related labels collapse into events (see above; default components)")
    parser.add_argument("--out", help="write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    graph = OntologyGraph(read_ontology(args.ontology))
    label_lists = [labels for path in args.segments for labels in read_segments(path)["labels"]]
    results = polyphony_by_level(label_lists, graph, args.levels, args.grouping)
    for result in results:
        print(f"level {result.level}: {result.percent:.1f}% of {result.clips} clips have >= 2 distinct events "
              f"({result.polyphonic}; grouping {args.grouping})")
    if args.out:
        payload = {
            "ontology": str(args.ontology),
            "segments": [str(path) for path in args.segments],
            "grouping": args.grouping,
            "levels": [{**asdict(result), "percent": round(result.percent, 3)} for result in results],
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=1))
    return 0
