"""Which code a job executed, and whether it has changed since: the fingerprints that decide re-runs.

A job started by the workflow records the package functions it executes (docs/fingerprints.md):

    SSLAM_CODE_RECORD=OUT/code.json SSLAM_FINGERPRINT=<P> python -m sslam.cli pretrain ...

`sslam/__init__.py` installs the recorder before anything else of the package is imported, so module
bodies count too. Every process of the job records: the main process keeps its discoveries in memory,
forked or spawned children (DataLoader workers, torchrun ranks) append theirs to `OUT/code.json.parts/`.
When the command succeeds, the main process maps the code it saw to units of `sslam.fingerprints.codeindex`, closes
them over the data they read and writes `{fingerprint: P, units: {unit: digest}}` atomically.

At parse time `scheduled_fingerprint` compares a record with the current source: when no recorded unit
changed, the job keeps its fingerprint P (so Snakemake sees unchanged params and leaves it alone); when
one did, the fingerprint becomes a digest of the units' current state and the job is re-scheduled. A job
that never ran gets the static fingerprint of everything its entry module imports.
"""
from __future__ import annotations

import builtins
import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslam.fingerprints.codeindex import WHOLE_REGISTRY, module_name

FINGERPRINT_ENVIRONMENT = "SSLAM_FINGERPRINT"
RECORD_ENVIRONMENT = "SSLAM_CODE_RECORD"
RECORD_FORMAT, RECORD_VERSION = "sslam-code-record", 1
REGISTRY_LINE = "registry"   # a parts-file line "registry<TAB>unit<TAB>key" (else "file<TAB>first line")
_PACKAGE_PREFIX = str(Path(__file__).resolve().parents[1]) + os.sep   # sslam/
_PACKAGE_NAME = __name__.partition(".")[0]


class CodeRecorder:
    """Sees the first call of every code object (sys.settrace on Python ≤ 3.11, sys.monitoring after)
    and keeps the package's ones; the cost after that is one dictionary lookup per Python call."""

    def __init__(self, record_path: Path) -> None:
        self.record_path = record_path
        self.parts_dir = record_path.with_name(record_path.name + ".parts")
        self.started = time.time()
        self.seen: set[Any] = set()
        self.locations: set[tuple[str, int]] = set()     # (file, first line) of package code that ran
        self.sources: dict[str, str] = {}                # file -> source when its module body ran
        self.registry_access: dict[str, set[str]] = {}   # registry unit -> keys looked up (see Registry)
        self.compiled_modules: set[str] = set()           # modules whose classes went through torch.compile
        self._part: Any = None

    # ------------------------------------------------------------------ recording
    def install(self) -> None:
        if sys.version_info >= (3, 12):
            monitoring = sys.monitoring
            monitoring.use_tool_id(monitoring.PROFILER_ID, "sslam-code-record")
            monitoring.register_callback(monitoring.PROFILER_ID, monitoring.events.PY_START, self._on_start)
            monitoring.set_events(monitoring.PROFILER_ID, monitoring.events.PY_START)
        else:
            sys.settrace(self._on_call)
            threading.settrace(self._on_call)
            self._import = builtins.__import__
            builtins.__import__ = self._import_untraced
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def uninstall(self) -> None:
        if sys.version_info >= (3, 12):
            sys.monitoring.set_events(sys.monitoring.PROFILER_ID, 0)
            sys.monitoring.free_tool_id(sys.monitoring.PROFILER_ID)
        else:
            sys.settrace(None)
            threading.settrace(None)
            builtins.__import__ = self._import

    def _import_untraced(self, name, globals=None, locals=None, fromlist=(), level=0):
        """The first import of a third-party module runs without the tracer: its code is never part of a
        fingerprint, and torch's import alone makes about a million Python calls, each one a trace event."""
        if level == 0 and name not in sys.modules and name.partition(".")[0] != _PACKAGE_NAME:
            previous = sys.gettrace()
            sys.settrace(None)
            try:
                return self._import(name, globals, locals, fromlist, level)
            finally:
                sys.settrace(previous)
        return self._import(name, globals, locals, fromlist, level)

    def _on_call(self, frame, event, arg):  # sys.settrace: called on every new frame, never traces lines
        code = frame.f_code
        if code not in self.seen:
            self._first_run(code)
        return None

    def _on_start(self, code, offset):  # sys.monitoring: each code object reports once, then is disabled
        self._first_run(code)
        return sys.monitoring.DISABLE

    def _first_run(self, code) -> None:
        self.seen.add(code)
        filename = code.co_filename
        if not filename.startswith(_PACKAGE_PREFIX):
            return
        location = (filename, code.co_firstlineno)
        if location in self.locations:
            return
        self.locations.add(location)
        if code.co_name == "<module>" and filename not in self.sources:
            try:
                self.sources[filename] = Path(filename).read_text(encoding="utf-8")
            except OSError:
                pass
        if self._part is not None:
            self._part.write(f"{filename}\t{code.co_firstlineno}\n")
            self._part.flush()

    def note_lookup(self, registry: str, key: str) -> None:
        keys = self.registry_access.setdefault(registry, set())
        if key not in keys:
            keys.add(key)
            if self._part is not None:
                self._part.write(f"{REGISTRY_LINE}\t{registry}\t{key}\n")

    def _after_fork(self) -> None:
        """A forked child (a DataLoader worker) writes what it discovers, since it may never return here."""
        self._open_part()

    def _open_part(self) -> None:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._part = open(self.parts_dir / f"{os.getpid()}.tsv", "a", buffering=1, encoding="utf-8")

    # ------------------------------------------------------------------ the record
    def finish(self, fingerprint: str) -> None:
        """Write the record (main process), or hand this process's discoveries to it (other ranks)."""
        self.uninstall()
        rank = os.environ.get("RANK")
        if rank not in (None, "0"):
            self._open_part()
            for filename, line in sorted(self.locations):
                self._part.write(f"{filename}\t{line}\n")
            for registry, keys in self.registry_access.items():
                self._part.writelines(f"{REGISTRY_LINE}\t{registry}\t{key}\n" for key in sorted(keys))
            self._part.close()
            return
        locations = set(self.locations)
        lookups = {registry: set(keys) for registry, keys in self.registry_access.items()}
        if self.parts_dir.is_dir():
            for part in self.parts_dir.glob("*.tsv"):
                if part.stat().st_mtime < self.started - 1:
                    continue  # left by an earlier, killed attempt
                for line in part.read_text(encoding="utf-8").splitlines():
                    fields = line.split("\t")
                    if len(fields) == 3 and fields[0] == REGISTRY_LINE:
                        lookups.setdefault(fields[1], set()).add(fields[2])
                    elif len(fields) == 2 and fields[1].isdigit():
                        locations.add((fields[0], int(fields[1])))
        units = executed_units(locations, self.sources)
        from sslam.fingerprints.codeindex import PackageIndex
        from sslam.runtime.io import atomic_write_json

        index = PackageIndex({module_name(Path(f)): text for f, text in self.sources.items() if module_name(Path(f))})
        for module in self.compiled_modules:
            for name in index.modules_imported_by(module):
                units.update(f"{name}:{unit}" for unit in index.module(name).digests)
        closed = index.dependencies(units, lookups)
        record = {"format": RECORD_FORMAT, "version": RECORD_VERSION, "fingerprint": fingerprint,
                  "command": sys.argv[1:3], "units": {unit: index.digest_of(unit) for unit in sorted(closed)}}
        atomic_write_json(self.record_path, record)
        for part in self.parts_dir.glob("*.tsv") if self.parts_dir.is_dir() else []:
            part.unlink(missing_ok=True)
        if self.parts_dir.is_dir() and not any(self.parts_dir.iterdir()):
            self.parts_dir.rmdir()


def executed_units(locations: set[tuple[str, int]], sources: dict[str, str]) -> set[str]:
    """Map (file, first line) of executed code objects to units (`module:qualname`, see sslam.fingerprints.codeindex).
    Class bodies are definitions, not execution: a class enters a record through its methods or a name."""
    from sslam.fingerprints.codeindex import MODULE_UNIT, PackageIndex

    index = PackageIndex({module_name(Path(f)): text for f, text in sources.items() if module_name(Path(f))})
    units = set()
    for filename, line in locations:
        module = module_name(Path(filename))
        module_index = index.module(module) if module else None
        if module_index is None:
            continue
        unit = module_index.unit_at(line, "")
        if unit.startswith("<class>"):
            continue
        units.add(f"{module}:{unit if unit != MODULE_UNIT else MODULE_UNIT}")
    return units


class Registry(Mapping):
    """A module-level table (command -> module, preset -> settings...) whose lookups the code recorder sees,
    so that a job depends on the entries it looked up, not on every entry: adding a CLI command or a variant
    preset re-runs nothing that does not use it. Write it as `NAME = Registry("NAME", {"key": value, ...})`
    (sslam.fingerprints.codeindex gives each entry its own unit). Iterating it makes the whole table a dependency."""

    def __init__(self, name: str, entries: dict[str, Any]) -> None:
        caller = sys._getframe(1).f_code.co_filename   # the defining module, also when it runs as __main__
        self._unit = f"{module_name(Path(caller)) or caller}:{name}"
        self._entries = dict(entries)

    def _note(self, key: Any) -> None:
        if _RECORDER is not None:
            _RECORDER.note_lookup(self._unit, key if isinstance(key, str) else WHOLE_REGISTRY)

    def __getitem__(self, key: str) -> Any:
        self._note(key)
        return self._entries[key]

    def __contains__(self, key: object) -> bool:
        self._note(key)
        return key in self._entries

    def get(self, key: str, default: Any = None) -> Any:
        self._note(key)
        return self._entries.get(key, default)

    def __iter__(self):
        self._note(None)
        return iter(self._entries)

    def __len__(self) -> int:
        self._note(None)
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self._unit}, {len(self._entries)} entries)"


_RECORDER: CodeRecorder | None = None


def start_recording_if_asked() -> None:
    """Called first thing by `sslam/__init__.py`: record when the workflow asked for it."""
    global _RECORDER
    path = os.environ.get(RECORD_ENVIRONMENT)
    if path and _RECORDER is None:
        _RECORDER = CodeRecorder(Path(path).resolve())
        _RECORDER.install()


def compiled(module: Any) -> Any:
    """`torch.compile(module)`, told to the recorder: the compiler traces the module's Python code without
    running it, so the job's record then covers every unit of every module that the module's own module
    imports (a static over-approximation, as for a job that never ran)."""
    import torch

    if _RECORDER is not None:
        _RECORDER.compiled_modules.add(type(module).__module__)
    return torch.compile(module)


def finish_recording() -> None:
    """Called by the CLI after a command succeeded."""
    global _RECORDER
    if _RECORDER is not None:
        _RECORDER.finish(job_fingerprint())
        _RECORDER = None


def job_fingerprint(*entry_modules: str) -> str:
    """The code fingerprint of the running job: the one the workflow scheduled it with (the rule's
    `params.code`, passed in SSLAM_FINGERPRINT) so that its MLflow tag, its metrics.json and its log banner
    name the same code version as the rule; outside the workflow, the static fingerprint of `entry_modules`
    (or of the command line's module)."""
    given = os.environ.get(FINGERPRINT_ENVIRONMENT)
    if given:
        return given
    from sslam.fingerprints.codeindex import PackageIndex

    return "static-" + PackageIndex().static_fingerprint(*(entry_modules or ("sslam.cli",)))


# ---------------------------------------------------------------------------------- parse time

@dataclass
class ScheduledFingerprint:
    value: str                                   # the rule's params.code
    changed: list[str] = field(default_factory=list)   # recorded units whose code changed (or vanished)
    recorded: bool = False                       # False: the job never ran (static fingerprint)


def read_record(path: str | Path) -> dict[str, Any] | None:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or record.get("version") != RECORD_VERSION:
        return None
    if not isinstance(record.get("units"), dict) or not isinstance(record.get("fingerprint"), str):
        return None
    return record


def scheduled_fingerprint(record_path: str | Path, entry_module: str, index=None) -> ScheduledFingerprint:
    """The fingerprint a job is scheduled with now (see the module docstring); `index` is a shared
    sslam.fingerprints.codeindex.PackageIndex so that one parse reads every module once."""
    from sslam.fingerprints.codeindex import PackageIndex, digest

    index = index or PackageIndex()
    record = read_record(record_path)
    if record is None:
        return ScheduledFingerprint("static-" + index.static_fingerprint(entry_module))
    units: dict[str, str | None] = record["units"]
    now = {unit: index.digest_of(unit) for unit in units}
    changed = sorted(unit for unit, value in units.items() if now[unit] != value)
    if not changed:
        return ScheduledFingerprint(record["fingerprint"], recorded=True)
    value = digest("\n".join(f"{unit} {now[unit]}" for unit in sorted(units)))
    return ScheduledFingerprint(value, changed, recorded=True)
