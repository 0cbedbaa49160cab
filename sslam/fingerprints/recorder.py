"""Which package code a job executed: the recorder every workflow job runs under.

A job started by the workflow records the package functions it executes (docs/fingerprints.md):

    SSLAM_CODE_RECORD=OUT/code.json SSLAM_FINGERPRINT=<P> python -m sslam.cli pretrain ...

`sslam/__init__.py` installs the recorder before anything else of the package is imported, so module
bodies count too. Every process of the job records: the main process keeps its discoveries in memory,
forked or spawned children (DataLoader workers, torchrun ranks) append theirs to `OUT/code.json.parts/`.
When the command succeeds, the main process maps the code it saw to units of `sslam.fingerprints.codeindex`,
closes them over the data they read and writes `{fingerprint: P, rules, units: {unit: digest}}` atomically.
The fingerprint machinery (this package) is never part of a record: like Snakemake, it observes the job
and does not compute its results.

Tracing pauses while a training loop is in its steady state (`stop_tracing`, then `resume_tracing` when the
loop ends): once the loop has run every kind of step it has (its first update, log point, evaluation point and
snapshot), a later step runs no function the first ones did not, so the loop runs at full speed and the record
is still complete (docs/fingerprints.md, "Steady state"). The code after the loop is traced again.
"""
from __future__ import annotations

import builtins
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sslam.fingerprints import registry
from sslam.fingerprints.codeindex import DIGEST_RULES, MODULE_UNIT, PackageIndex, Rules, module_name
from sslam.fingerprints.schedule import RECORD_FORMAT, RECORD_VERSION, is_machinery

FINGERPRINT_ENVIRONMENT = "SSLAM_FINGERPRINT"
RECORD_ENVIRONMENT = "SSLAM_CODE_RECORD"
REGISTRY_LINE = "registry"   # a parts-file line "registry<TAB>unit<TAB>key" (else "file<TAB>first line")
_PACKAGE_PREFIX = str(Path(__file__).resolve().parents[1]) + os.sep     # sslam/
_MACHINERY_PREFIX = str(Path(__file__).resolve().parent) + os.sep       # sslam/fingerprints/: never recorded
_PACKAGE_NAME = __name__.partition(".")[0]


class CodeRecorder:
    """Sees the first call of every code object (sys.settrace on Python ≤ 3.11, sys.monitoring after)
    and keeps the package's ones; the cost after that is one set lookup per Python call while tracing."""

    def __init__(self, record_path: Path) -> None:
        self.record_path = record_path
        self.parts_dir = record_path.with_name(record_path.name + ".parts")
        self.started = time.time()
        self.tracing = False
        self.seen: set[Any] = set()
        self.locations: set[tuple[str, int]] = set()     # (file, first line) of package code that ran
        self.sources: dict[str, str] = {}                # file -> source when its module body ran
        self.registry_access: dict[str, set[str]] = {}   # registry unit -> keys looked up (see Registry)
        self.compiled_modules: set[str] = set()          # modules whose classes went through torch.compile
        self._part: Any = None

    # ------------------------------------------------------------------ recording
    def install(self) -> None:
        self.trace()
        registry.observe(self)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def trace(self) -> None:
        """Start (or, after `uninstall`, resume) seeing first calls; what was seen before is kept."""
        if self.tracing:
            return
        if self.seen:
            # Resuming: the functions on the stack were entered while tracing was off (the hooks that resume it
            # among them). They run, so they count, as if their call had been seen.
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_code not in self.seen:
                    self._first_run(frame.f_code)
                frame = frame.f_back
        self.tracing = True  # first: `_on_call` drops a tracer it finds while this is False
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

    def uninstall(self) -> None:
        """Stop tracing (what was seen is kept); registry lookups and compiled modules are still noted."""
        if not self.tracing:
            return
        self.tracing = False
        if sys.version_info >= (3, 12):
            sys.monitoring.set_events(sys.monitoring.PROFILER_ID, 0)
            sys.monitoring.free_tool_id(sys.monitoring.PROFILER_ID)
        else:
            # sys.settrace reaches only the calling thread; a thread already running (a DataLoader's pin-memory
            # thread) drops its tracer itself at its next call (`_on_call`).
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
        if not self.tracing:
            sys.settrace(None)  # a thread that was running when tracing stopped
            return None
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
        if not filename.startswith(_PACKAGE_PREFIX) or filename.startswith(_MACHINERY_PREFIX):
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

    def note_lookup(self, registry_unit: str, key: str) -> None:
        keys = self.registry_access.setdefault(registry_unit, set())
        if key not in keys:
            keys.add(key)
            if self._part is not None:
                self._part.write(f"{REGISTRY_LINE}\t{registry_unit}\t{key}\n")

    def note_compiled(self, module: str) -> None:
        self.compiled_modules.add(module)

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
        registry.forget(self)
        rank = os.environ.get("RANK")
        if rank not in (None, "0"):
            self._open_part()
            for filename, line in sorted(self.locations):
                self._part.write(f"{filename}\t{line}\n")
            for registry_unit, keys in self.registry_access.items():
                self._part.writelines(f"{REGISTRY_LINE}\t{registry_unit}\t{key}\n" for key in sorted(keys))
            self._part.close()
            return
        locations = set(self.locations)
        lookups = {registry_unit: set(keys) for registry_unit, keys in self.registry_access.items()}
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
        index = PackageIndex({name: text for f, text in self.sources.items() if (name := module_name(Path(f)))},
                             Rules(DIGEST_RULES))
        units = executed_units(locations, index)
        for module in self.compiled_modules:
            for name in index.modules_imported_by(module):
                units.update(f"{name}:{unit}" for unit in index.module(name).digests)
        units = {unit for unit in units if not is_machinery(unit)}
        graph = {unit: [target for target in targets if not is_machinery(target)]
                 for unit, targets in index.graph(units, lookups).items() if not is_machinery(unit)}
        record = {"format": RECORD_FORMAT, "version": RECORD_VERSION, "rules": DIGEST_RULES,
                  "fingerprint": fingerprint, "command": sys.argv[1:3], "roots": sorted(units),
                  "units": {unit: index.digest_of(unit) for unit in sorted(graph)},
                  "edges": {unit: targets for unit, targets in sorted(graph.items()) if targets}}
        _write_atomically(self.record_path, json.dumps(record, indent=2) + "\n")
        for part in self.parts_dir.glob("*.tsv") if self.parts_dir.is_dir() else []:
            part.unlink(missing_ok=True)
        if self.parts_dir.is_dir() and not any(self.parts_dir.iterdir()):
            self.parts_dir.rmdir()


def _write_atomically(path: Path, text: str) -> None:
    """The record appears whole or not at all (this package stands alone: no sslam.runtime.io here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def executed_units(locations: set[tuple[str, int]], index: PackageIndex) -> set[str]:
    """Map (file, first line) of executed code objects to units (`module:qualname`, see the code index).
    Class bodies are definitions, not execution: a class enters a record through its methods or a name."""
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


_RECORDER: CodeRecorder | None = None


def start_recording_if_asked() -> None:
    """Called first thing by `sslam/__init__.py`: record when the workflow asked for it."""
    global _RECORDER
    path = os.environ.get(RECORD_ENVIRONMENT)
    if path and _RECORDER is None:
        _RECORDER = CodeRecorder(Path(path).resolve())
        _RECORDER.install()


def stop_tracing() -> None:
    """A training loop's steady state begins: until `resume_tracing`, the job runs only functions it has already
    run (see the module docstring). Tracing pauses; the record is still written when the command succeeds."""
    if _RECORDER is not None:
        _RECORDER.uninstall()


def resume_tracing() -> None:
    """The steady state has ended (the loop returned or raised): the code from here on is traced again."""
    if _RECORDER is not None:
        _RECORDER.trace()


def is_tracing() -> bool:
    return _RECORDER is not None and _RECORDER.tracing


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
    return "static-" + PackageIndex().static_fingerprint(*(entry_modules or ("sslam.cli",)))
