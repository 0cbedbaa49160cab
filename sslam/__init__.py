"""sslam: a pure-PyTorch reference implementation of SSLAM (ICLR 2025) and of the study around it."""

__version__ = "0.1.0"

import sys  # noqa: E402

# A workflow job records the package code it executes (sslam/fingerprints/); the recorder must be in
# place before any other module of the package is imported, so that module bodies count too.
from sslam.fingerprints import start_recording_if_asked as _start_recording_if_asked  # noqa: E402

_start_recording_if_asked()

def lazy_exports(module: str, exports: dict[str, str]):
    """A module `__getattr__` that imports each re-exported name from its defining module on first use, so that
    importing a package (e.g. `sslam.model.config` at parse time) never pulls in torch through its __init__."""
    namespace = sys.modules[module].__dict__

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    return __getattr__


# `sslam.load_encoder(...)` / `sslam.encode(...)`: the embeddings API (docs/embeddings.md).
__getattr__ = lazy_exports(__name__, {name: "sslam.embeddings.api" for name in
                                      ("load_encoder", "encode", "Embedder", "ClipEmbedding")})
