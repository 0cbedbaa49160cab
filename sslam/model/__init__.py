"""Model layer: encoder, decoder, EMA teacher and checkpoint interop. Knows nothing of data or losses."""
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

def __getattr__(name: str):
    # Re-exports are imported on first use, so that `import sslam.model.config` (the study's parse-time
    # validation) never pulls in torch through this package's __init__.
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
