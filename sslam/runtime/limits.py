"""Every size limit that protects a job from the files it reads, in one place (docs/integrity.md, "Limits").

A study reads millions of files from the internet and checkpoints from anyone. A small file can state a
huge size (a sample rate, a row count, a tensor shape, a table length, a pickled integer) and make a reader
allocate gigabytes before any check. Every reader therefore compares what a file states with one of these
limits, or with what the file can really hold, before it allocates, and refuses the file with one line
(an `AudioError` skip, a `CacheError`, a `CheckpointError`). The limits are far above any real input.
Torch-free, so that config validation and the workflow can import it.
"""
from __future__ import annotations

# --------------------------------------------------------------------------------------------- audio
# A whole-file decode costs memory in proportion to the file's length; longer files need `max_frames`.
MAX_WHOLE_FILE_SECONDS = 10 * 60
# Decoded float32 samples (all channels) one decode may hold: a many-channel file is oversize even when short.
MAX_DECODED_BYTES = 2**30
# Sample rates a real recording can have (telephone 8 kHz ... the 768 kHz of high-end converters); a header
# outside this range is a damaged or crafted file.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
# torchaudio's sinc resampler (the official recipe's) builds a (new / g) × (orig / g + 2·width) kernel,
# g = gcd(orig, new): a few hundred thousand elements at every common rate (11,025 Hz: 291,200), but
# 16,000 × 48,055 at 48,017 Hz (a prime), i.e. gigabytes. Above this many elements the front end resamples
# with soxr instead, whose memory does not depend on the rates' factors.
MAX_SINC_KERNEL_ELEMENTS = 2**20

# --------------------------------------------------------------------------------------------- cache shards
# Mel bins per frame a shard may record (the official front end has 128): with the target length below,
# this bounds the one clip a reader holds at a time.
MAX_MEL_BINS = 1024

# --------------------------------------------------------------------------------------------- checkpoints
# Positional-table length (time patches) a model folder's config.json may state (`max_length`): the table
# is max_time_patches × freq_patches × embed_dim floats. 4,096 time patches of 16 frames are 655 s of audio,
# more than the longest whole-file decode; the official models use 768.
MAX_TIME_PATCHES = 4096
# Elements of that positional table (max_time_patches × freq_patches × embed_dim): the width comes from a
# weight the file really stores, but the table costs ~1,000 × more per channel than that weight. ViT-B at
# 768 time patches: 4.7 M; ViT-L at 4,096 time patches and 128 mel bins: 2^25 exactly.
MAX_POSITION_TABLE_ELEMENTS = 2**25
# Frames per input window a checkpoint or model folder may state (`target_length`): each window is padded
# to it. The longest window any positional table within MAX_TIME_PATCHES can take (16-frame patches).
MAX_TARGET_LENGTH = MAX_TIME_PATCHES * 16
# A compressed `.pt` archive (torch.save stores its entries uncompressed) may expand to at most this many
# times its size on disk when read: a deflated block of zeros expands a thousandfold.
MAX_CHECKPOINT_EXPANSION = 2
# Bytes one `bytes(n)` / `bytearray(n)` call of a pickle may construct (a checkpoint's config never holds
# large byte strings; tensors are stored outside the pickle).
MAX_PICKLED_BYTES = 2**20
# Elements of the array numpy's `_reconstruct` creates before its data arrives (pickles of arrays use
# shape (0,)); a larger one is a crafted allocation.
MAX_PICKLED_ARRAY_ELEMENTS = 2**16

__all__ = [name for name in dir() if name.isupper()]
