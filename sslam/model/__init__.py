"""Model layer: encoder, decoder, EMA teacher and checkpoint interop. Knows nothing of data or losses."""
from sslam import lazy_exports

_EXPORTS = {
    "CheckpointError": "sslam.model.checkpoints.types",
    "LoadedCheckpoint": "sslam.model.checkpoints.types",
    "build_encoder": "sslam.model.checkpoints.read",
    "load_encoder": "sslam.model.checkpoints.read",
    "read_checkpoint": "sslam.model.checkpoints.read",
    "DecoderConfig": "sslam.model.config",
    "EncoderConfig": "sslam.model.config",
    "ModelInputError": "sslam.model.config",
    "Decoder2d": "sslam.model.decoder",
    "AudioEncoder": "sslam.model.encoder",
    "gather_tokens": "sslam.model.encoder",
    "sincos_table": "sslam.model.encoder",
    "InputSettings": "sslam.model.checkpoints.settings",
    "input_settings": "sslam.model.checkpoints.settings",
    "resolve_checkpoint": "sslam.model.checkpoints.routes",
    "export_onnx": "sslam.model.checkpoints.export",
    "random_encoder": "sslam.model.checkpoints.export",
    "save_pretrained": "sslam.model.checkpoints.export",
    "EMATeacher": "sslam.model.teacher",
    "ema_decay": "sslam.model.teacher",
}

__getattr__ = lazy_exports(__name__, _EXPORTS)  # imported on first use (no torch at parse time)

__all__ = sorted(_EXPORTS)
