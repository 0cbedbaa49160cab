"""Frozen SSLAM/EAT embeddings for other evaluation suites: the Python API (`sslam.embeddings.load_encoder`,
`encode`), `sslam extract`, HEAR (`sslam.embeddings.hear`) and X-ARES (`sslam.embeddings.xares`)."""
from sslam import lazy_exports

_EXPORTS = {name: "sslam.embeddings.api" for name in ("load_encoder", "encode", "Embedder", "ClipEmbedding")}

__getattr__ = lazy_exports(__name__, _EXPORTS)  # imported on first use: `import sslam.embeddings.hear` stays light

__all__ = sorted(_EXPORTS)
