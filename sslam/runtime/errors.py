"""Exceptions that the command line reports as one clear line instead of a traceback."""


def first_line(error: BaseException) -> str:
    """Library errors can span lines (torch's zip reader, safetensors, MLflow); the user gets one."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class SslamError(Exception):
    """Base class: a user-facing problem (bad input, bad config, missing file)."""


class ConfigError(SslamError, ValueError):
    """A config file or section is malformed; the message names the offending key."""


class AudioError(SslamError):
    """An audio file cannot be turned into a usable spectrogram (corrupt, empty, silent, NaN...)."""


class ManifestError(SslamError, ValueError):
    """A manifest or dataset layout is malformed; the message names the file and line."""


class CacheError(SslamError):
    """An HDF5 spectrogram cache shard is missing, incomplete, stale, or too many clips failed."""


class WriteError(SslamError, OSError):
    """A result file could not be written; the message (not the errno) is the one line shown."""

    def __str__(self) -> str:
        return str(self.strerror)


class DiskFullError(WriteError):
    """The disk (or quota) filled up while a result file was written; the previous version was kept."""


class OutputPathError(WriteError):
    """A result file cannot be created where it was asked for (a missing, read-only or non-folder parent)."""
