"""sslam: a pure-PyTorch reference implementation of SSLAM (ICLR 2025) and of the study around it."""

__version__ = "0.1.0"

# A workflow job records the package code it executes (sslam/provenance.py); the recorder must be in
# place before any other module of the package is imported, so that module bodies count too.
from sslam.provenance import start_recording_if_asked as _start_recording_if_asked  # noqa: E402

_start_recording_if_asked()
