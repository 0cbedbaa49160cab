"""sslam: a pure-PyTorch reference implementation of SSLAM (ICLR 2025) and of the study around it."""

__version__ = "0.1.0"

# A workflow job records the package code it executes (sslam/provenance.py); the recorder must be in
# place before any other module of the package is imported, so that module bodies count too.
from sslam.provenance import start_recording_if_asked as _start_recording_if_asked  # noqa: E402

_start_recording_if_asked()

_EXPORTS = {"load_encoder": "sslam.embeddings", "encode": "sslam.embeddings", "Embedder": "sslam.embeddings",
            "ClipEmbedding": "sslam.embeddings"}


def __getattr__(name: str):
    # `sslam.load_encoder(...)` / `sslam.encode(...)`: the embeddings API (docs/embeddings.md), imported on first
    # use so that `import sslam` stays light for the command line and the workflow.
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sslam' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
