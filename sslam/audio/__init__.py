"""Audio in: the front end (decode, mono, resample, fbank: `sslam.audio.front_end`) and its torch-free
settings (`sslam.audio.config`)."""
