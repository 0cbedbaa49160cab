"""The two places where the package tells the fingerprint recorder what tracing cannot see, without knowing
the recorder: a `Registry` reports the keys looked up in it, `compiled` the modules handed to torch.compile.

The recorder (`sslam.fingerprints.recorder`) observes them while a workflow job runs; everywhere else they are
a plain read-only mapping and `torch.compile`.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from sslam.fingerprints.codeindex import WHOLE_REGISTRY, module_name


class Observer(Protocol):
    def note_lookup(self, registry: str, key: str) -> None: ...

    def note_compiled(self, module: str) -> None: ...


_OBSERVERS: list[Observer] = []


def observe(observer: Observer) -> None:
    _OBSERVERS.append(observer)


def forget(observer: Observer) -> None:
    if observer in _OBSERVERS:
        _OBSERVERS.remove(observer)


class Registry(Mapping):
    """A module-level table (command -> module, preset -> settings...) whose lookups the code recorder sees,
    so that a job depends on the entries it looked up, not on every entry: adding a CLI command or a variant
    preset re-runs nothing that does not use it. Write it as `NAME = Registry("NAME", {"key": value, ...})`
    (sslam.fingerprints.codeindex gives each entry its own unit). Iterating it makes the whole table a
    dependency."""

    def __init__(self, name: str, entries: dict[str, Any]) -> None:
        caller = sys._getframe(1).f_code.co_filename   # the defining module, also when it runs as __main__
        self._unit = f"{module_name(Path(caller)) or caller}:{name}"
        self._entries = dict(entries)

    def _note(self, key: Any) -> None:
        for observer in _OBSERVERS:
            observer.note_lookup(self._unit, key if isinstance(key, str) else WHOLE_REGISTRY)

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


def compiled(module: Any) -> Any:
    """`torch.compile(module)`, told to the recorder: the compiler traces the module's Python code without
    running it, so the job's record then covers every unit of every module that the module's own module
    imports (a static over-approximation, as for a job that never ran)."""
    import torch

    for observer in _OBSERVERS:
        observer.note_compiled(type(module).__module__)
    return torch.compile(module)
