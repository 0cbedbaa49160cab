"""sslam: a pure-PyTorch reference implementation of SSLAM (ICLR 2025) and of the study around it."""

__version__ = "0.1.0"
