"""Parse time: the fingerprint each job is scheduled with, from the code record its last run wrote.

When the code a job executed is unchanged, the job keeps the fingerprint it ran with (Snakemake sees
unchanged params and leaves it alone); when it changed, the fingerprint becomes a digest of the units'
current state and the job is re-scheduled; a job that never ran gets the static fingerprint of
everything its entry module imports.

"Unchanged" is decided by content, not by place (rules 2, docs/fingerprints.md). A record holds the units
the job ran (its roots), every unit their code reads transitively (with digests) and the edges between
them. Each root must still exist with its digest — in place, or, if it is gone from there, as the one
unit of the package with the same name and digest (code that moved). Then, from the roots, what each unit
reads today (its names resolved in today's package) must be units of the same names and digests as the
units it read when the job ran, edge by edge; and every package module body that importing today's code
runs must be one the job ran, or one that does nothing. By induction along the job's execution, today's
code then does what the recorded code did. Records made under rules 1 (module paths inside digests) are
compared in place only.
"""
from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslam.fingerprints.codeindex import DIGEST_RULES, MODULE_UNIT, ModuleIndex, PackageIndex, Rules, digest

RECORD_FORMAT = "sslam-code-record"
RECORD_VERSIONS = (1, 2)       # 1: before rules were recorded (rules 1 implied)
RECORD_VERSION = 2
# The fingerprint machinery itself: trusted like Snakemake, never part of a job's fingerprint (the last two
# are its modules' names in records made before it became a package).
MACHINERY = ("sslam.fingerprints", "sslam.provenance", "sslam.codeindex")


def is_machinery(unit: str) -> bool:
    module = unit.partition(":")[0]
    return any(module == name or module.startswith(name + ".") for name in MACHINERY)


@dataclass
class ScheduledFingerprint:
    value: str                                          # the rule's params.code
    changed: list[str] = field(default_factory=list)    # recorded units whose code changed (or vanished)
    recorded: bool = False                              # False: the job never ran (static fingerprint)
    moved: dict[str, str] = field(default_factory=dict)  # recorded unit -> where that code is now
    rules: int | None = None                            # the digest rules of the record


def read_record(path: str | Path) -> dict[str, Any] | None:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT \
            or record.get("version") not in RECORD_VERSIONS:
        return None
    if not isinstance(record.get("units"), dict) or not isinstance(record.get("fingerprint"), str):
        return None
    if record.get("rules", 1) not in (1, DIGEST_RULES):
        return None  # rules this code cannot evaluate: the job re-runs (and `sslam why` says so)
    if record.get("rules", 1) >= 2 and not (isinstance(record.get("roots"), list)
                                            and isinstance(record.get("edges"), dict)):
        return None
    return record


@dataclass
class Comparison:
    changed: list[str]
    moved: dict[str, str]


class Scheduler:
    """One per parse: indexes of today's package under each set of rules, and the comparison of every
    distinct record (many jobs ran the same code) made once."""

    def __init__(self, sources: dict[str, str] | None = None) -> None:
        self._sources = sources
        self._indexes: dict[int, PackageIndex] = {}
        self._compared: dict[tuple, Comparison] = {}

    def index(self, rules: int = DIGEST_RULES) -> PackageIndex:
        if rules not in self._indexes:
            self._indexes[rules] = PackageIndex(self._sources, Rules(rules))
        return self._indexes[rules]

    def scheduled(self, record_path: str | Path, entry_module: str) -> ScheduledFingerprint:
        record = read_record(record_path)
        if record is None:
            return ScheduledFingerprint("static-" + self.index().static_fingerprint(entry_module))
        units: dict[str, str | None] = record["units"]
        comparison = self.compare(record)
        rules = record.get("rules", 1)
        if not comparison.changed:
            return ScheduledFingerprint(record["fingerprint"], recorded=True, moved=comparison.moved, rules=rules)
        index = self.index(rules)
        now = {unit: index.digest_of(unit) for unit in units}
        value = digest("\n".join(f"{unit} {now[unit]}" for unit in sorted(units)))
        return ScheduledFingerprint(value, comparison.changed, recorded=True, rules=rules)

    def compare(self, record: dict[str, Any]) -> Comparison:
        """A record (units and digests; under rules 2 also the units its job ran and the edges between them)
        against today's code; records of the same code are compared once."""
        rules = record.get("rules", 1)
        key = json.dumps([rules, record["units"], record.get("roots"), record.get("edges")], sort_keys=True)
        if key not in self._compared:
            recorded = {unit: value for unit, value in record["units"].items() if not is_machinery(unit)}
            self._compared[key] = (_compare_in_place(self.index(1), recorded) if rules == 1 else
                                   _compare_by_content(self.index(rules), record))
        return self._compared[key]


def _compare_in_place(index: PackageIndex, recorded: dict[str, str | None]) -> Comparison:
    """Rules 1: every recorded unit, at its recorded place, with its recorded digest."""
    return Comparison(sorted(unit for unit, value in recorded.items() if index.digest_of(unit) != value), {})


def _compare_by_content(index: PackageIndex, record: dict[str, Any]) -> Comparison:
    """Rules 2: today's code, followed from the job's roots along the edges its record holds, must meet units
    of the same name and content as the record's at every step (see the module docstring)."""
    recorded: dict[str, str | None] = {unit: value for unit, value in record["units"].items() if not is_machinery(unit)}
    edges: dict[str, list[str]] = record.get("edges", {})
    problems: set[str] = set()
    pairs: dict[str, set[str]] = {}
    roots = [root for root in record["roots"] if root in recorded]
    bodies = [root for root in roots if root.endswith(f":{MODULE_UNIT}")]
    roots_now: set[str] = set()

    def follow(pending: list[tuple[str, str]]) -> None:
        while pending:
            unit, now = pending.pop()
            if now in pairs.setdefault(unit, set()):
                continue
            pairs[unit].add(now)
            before = [target for target in edges.get(unit, []) if target in recorded]
            after = _narrowed_like(index, [t for t in index.targets(now) if not is_machinery(t)], before)
            matched = _match(index, recorded, before, after)
            if matched is None:
                problems.add(unit)
            else:
                pending.extend(matched)

    # Functions and methods first: their content is distinctive. Module bodies then go where the rest of their
    # module went (many read the same: empty, or only `from __future__ import annotations`).
    for phase in ([root for root in roots if root not in bodies], bodies):
        votes = Counter((unit.partition(":")[0], now.partition(":")[0]) for unit, nows in pairs.items() for now in nows)
        located = []
        for root in phase:
            now = _locate(index, root, recorded[root], votes)
            if now is not None:
                located.append((root, now))
            elif not (root in bodies and recorded[root] in _inert_bodies(index)):
                problems.add(root)   # (a body that only defined names did nothing, wherever it is now)
        roots_now |= {now for _, now in located}
        follow(located)
    # Modules whose bodies run today: where the roots are, and where the units of every module whose body ran
    # then are now (a name the code merely refers to, e.g. a lazy import never taken, imports nothing).
    imported_then = {body.partition(":")[0] for body in bodies}
    imported = roots_now | {now for unit, nows in pairs.items() if unit.partition(":")[0] in imported_then
                            for now in nows if not now.endswith(f":{MODULE_UNIT}")}
    problems |= _new_package_code(index, imported, {now for now in roots_now if now.endswith(f":{MODULE_UNIT}")})
    moved = {unit: sorted(now)[0] for unit, now in pairs.items() if now != {unit}}
    return Comparison(sorted(problems), {} if problems else moved)


def _locate(index: PackageIndex, unit: str, value: str | None, votes: Counter) -> str | None:
    """Where a unit the job ran is now: in place when it is there unchanged, else the one unit of the package
    with its name and content (ties go to the module where the rest of its old module went)."""
    if value is None:
        return None
    if index.digest_of(unit) == value:
        return unit
    module, _, local = unit.partition(":")
    current = index.module(module)
    if current is not None and local in current.digests:
        return None          # edited in place: a change, not a move
    candidates = index.units_with(local, value)
    if len(candidates) > 1:
        best = max(votes[(module, c.partition(":")[0])] for c in candidates)
        candidates = [c for c in candidates if votes[(module, c.partition(":")[0])] == best]
    return candidates[0] if len(candidates) == 1 else None     # else gone, or ambiguous


def _content(index: PackageIndex, unit: str, recorded: dict[str, str | None] | None = None) -> tuple[str, str | None]:
    local = unit.partition(":")[2]
    return local, recorded[unit] if recorded is not None else index.digest_of(unit)


def _match(index: PackageIndex, recorded: dict[str, str | None], before: list[str],
           after: list[str]) -> list[tuple[str, str]] | None:
    """Pair the units a recorded unit read with those its code reads today, by name and content; None when they
    differ. Units of equal content pair with each other (each pair is then checked along its own edges)."""
    by_content: dict[tuple, list[str]] = {}
    for target in after:
        by_content.setdefault(_content(index, target), []).append(target)
    old: dict[tuple, list[str]] = {}
    for target in before:
        old.setdefault(_content(index, target, recorded), []).append(target)
    if {key: len(units) for key, units in old.items()} != {key: len(units) for key, units in by_content.items()}:
        return None
    return [(unit, now) for key, units in old.items() for unit in units for now in by_content[key]]


def _narrowed_like(index: PackageIndex, targets: list[str], before: list[str]) -> list[str]:
    """Today's targets, with a registry narrowed to the entries the job looked up (those its record names)."""
    narrowed: list[str] = []
    for target in targets:
        module, _, local = target.partition(":")
        current = index.module(module)
        if current is not None and local.startswith("=") and local[1:] in current.registries:
            prefix = f"={local[1:]}["
            keys = sorted({old.partition(":")[2][len(prefix):-1] for old in before
                           if old.partition(":")[2].startswith(prefix)})
            whole = any(old.partition(":")[2] == local for old in before)
            narrowed.extend([target] if whole else [f"{target}[{key}]" for key in keys])
        else:
            narrowed.append(target)
    return narrowed


def _inert_bodies(index: PackageIndex) -> frozenset[str]:
    """Digests of module bodies that do nothing when imported, under the index's rules."""
    return _inert_digests(index.rules)


@functools.lru_cache(maxsize=None)
def _inert_digests(rules: Rules) -> frozenset[str]:
    return frozenset(ModuleIndex.parse("sslam.probe", source, rules).digests[MODULE_UNIT]
                     for source in ("", "from __future__ import annotations\n"))


def _new_package_code(index: PackageIndex, ran: set[str], bodies_now: set[str]) -> set[str]:
    """Importing a module runs the bodies of its packages and of the modules it imports at module level, before
    any of its code: for every module of `ran` (units whose modules are imported today), each such body must be
    one the job ran (`bodies_now`: where the bodies it ran are today), or one that only defines and binds names."""
    problems = set()
    checked: set[str] = set()
    pending = [unit.partition(":")[0] for unit in ran]
    while pending:
        module = pending.pop()
        if module in checked:
            continue
        checked.add(module)
        for loaded in index.imported_at_load(module):
            body = f"{loaded}:{MODULE_UNIT}"
            if is_machinery(body) or body in bodies_now or (index.module(loaded) and index.module(loaded).inert):
                pending.append(loaded)     # (what an inert module imports runs too)
            else:
                problems.add(body)
    return problems
