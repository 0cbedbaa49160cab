"""Model layer: encoder, decoder, EMA teacher and checkpoint interop. Knows nothing of data or losses."""
from sslam import lazy_exports

_EXPORTS = {
    "CheckpointError": "sslam.model.checkpoints",
    "LoadedCheckpoint": "sslam.model.checkpoints",
    "build_encoder": "sslam.model.checkpoints",
    "load_encoder": "sslam.model.checkpoints",
    "read_checkpoint": "sslam.model.checkpoints",
    "DecoderConfig": "sslam.model.config",
    "EncoderConfig": "sslam.model.config",
    "ModelInputError": "sslam.model.config",
    "Decoder2d": "sslam.model.decoder",
    "AudioEncoder": "sslam.model.encoder",
    "gather_tokens": "sslam.model.encoder",
    "sincos_table": "sslam.model.encoder",
    "InputSettings": "sslam.model.hub",
    "input_settings": "sslam.model.hub",
    "resolve_checkpoint": "sslam.model.hub",
    "export_onnx": "sslam.model.export",
    "random_encoder": "sslam.model.export",
    "save_pretrained": "sslam.model.export",
    "EMATeacher": "sslam.model.teacher",
    "ema_decay": "sslam.model.teacher",
}

__getattr__ = lazy_exports(__name__, _EXPORTS)  # imported on first use (no torch at parse time)

__all__ = sorted(_EXPORTS)
