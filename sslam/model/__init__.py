"""Model layer: encoder, decoder, EMA teacher and checkpoint interop. Knows nothing of data or losses."""
from sslam.model.checkpoints import CheckpointError, LoadedCheckpoint, build_encoder, load_encoder, read_checkpoint
from sslam.model.decoder import Decoder2d, DecoderConfig
from sslam.model.encoder import AudioEncoder, EncoderConfig, ModelInputError, gather_tokens, sincos_table
from sslam.model.teacher import EMATeacher, ema_decay

__all__ = [
    "AudioEncoder",
    "CheckpointError",
    "Decoder2d",
    "DecoderConfig",
    "EMATeacher",
    "EncoderConfig",
    "LoadedCheckpoint",
    "ModelInputError",
    "build_encoder",
    "ema_decay",
    "gather_tokens",
    "load_encoder",
    "read_checkpoint",
    "sincos_table",
]
