"""Dataset adapters: the only code that knows a dataset's on-disk layout.

Every adapter is a function `build(root: Path, **options) -> Manifest` returning a validated
canonical manifest with absolute audio paths. Adding a dataset = one module + one line below.
Modules are imported on first use so that one dataset's parsing code never slows another down.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

from sslam.data.manifest import Manifest
from sslam.runtime.errors import ConfigError

# adapter name -> (module, function); docs/manifest.md has one section per entry
ADAPTERS: dict[str, tuple[str, str]] = {
    "audioset": ("sslam.data.adapters.audioset", "build_audioset"),
    "esc50": ("sslam.data.adapters.esc50", "build_esc50"),
    "ks1": ("sslam.data.adapters.speech_commands", "build_ks1"),
    "ks2": ("sslam.data.adapters.speech_commands", "build_ks2"),
    "spass": ("sslam.data.adapters.spass", "build_spass"),
    "urbansed": ("sslam.data.adapters.urbansed", "build_urbansed"),
    "desed_fl": ("sslam.data.adapters.desed_fl", "build_desed_fl"),
    "polyphony_bins": ("sslam.data.adapters.polyphony_bins", "build_polyphony_bins"),
    "fairseq": ("sslam.data.adapters.fairseq", "build_fairseq"),
}


def get_adapter(name: str) -> Callable[..., Manifest]:
    if name not in ADAPTERS:
        raise ConfigError(f"unknown dataset adapter {name!r}; known adapters: {', '.join(sorted(ADAPTERS))}")
    module, function = ADAPTERS[name]
    return getattr(importlib.import_module(module), function)
