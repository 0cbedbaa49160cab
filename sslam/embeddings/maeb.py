"""MAEB, the audio part of MTEB (`pip install mteb`, 2.x): an mteb encoder and a `ModelMeta` for SSLAM/EAT
checkpoints, so that frozen SSLAM embeddings are compared where other audio encoders are.

    import mteb
    from sslam.embeddings.maeb import sslam_model_meta

    meta = sslam_model_meta()                              # the released SSLAM (hf:ta012/SSLAM_pretrain)
    model = meta.load_model(device="cuda")                 # a SSLAMMtebEncoder
    tasks = mteb.get_benchmark("MAEB(v1, audio-only)").tasks
    results = mteb.evaluate(model, tasks)

    meta = sslam_model_meta("results/paper/pretrain/SSLAM/checkpoint.pt", name="me/sslam-repro")   # any route

Each clip gets one vector: its CLS output (`tokens="cls"`, default) or the mean of its patch tokens that hold
audio (`tokens="mean"`), of the chosen `layers` (-1 = the last block's output; several are concatenated, so
the vector has L·D values). Clips of any length are embedded whole by windows (sslam.embeddings).

**Batch padding.** mteb hands an encoder a batch of clips of different lengths. Wrappers that pad the batch to
its longest clip change a clip's embedding with its neighbours (MAEB's documented pitfall). Here every clip
is embedded on its own: its log-mel is padded to the model's window the way the official recipe pads one
clip, whatever else is in the batch, and the mean leaves that padding out, so a clip gives the same vector
alone and in any batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslam.embeddings.api import Embedder, load_encoder, parse_layers, token_name
from sslam.model.checkpoints.read import read_checkpoint
from sslam.model.config import EncoderConfig
from sslam.runtime.errors import SslamError

try:
    from mteb.models import ModelMeta
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.modality_collators import AudioCollator
except ImportError as error:  # the module is only for mteb users
    raise SslamError("sslam.embeddings.maeb needs mteb: pip install 'mteb>=2.26'") from error

SSLAM_HUB_ID = "ta012/SSLAM_pretrain"
SCENE_TOKENS = ("cls", "mean")
CITATION = """@inproceedings{alex2025sslam,
  title={{SSLAM}: Enhancing Self-Supervised Models with Audio Mixtures for Polyphonic Soundscapes},
  author={Alex, Tony and Ahmed, Sara and Mustafa, Armin and Awais, Muhammad and Jackson, Philip JB},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2025}
}"""


def checkpoint_route(model_name: str, revision: str | None) -> str:
    """mteb's (model_name, revision) -> a checkpoint route (docs/checkpoints.md): a Hugging Face id becomes
    hf:OWNER/NAME[@REVISION]; a route already (hf:..., a file, a folder, "random") is kept."""
    if model_name.startswith("hf:") or model_name == "random" or Path(model_name).exists():
        return model_name
    return f"hf:{model_name}" + (f"@{revision}" if revision else "")


class SSLAMMtebEncoder(AbsEncoder):
    """mteb's encoder interface (`encode(inputs, *, task_metadata, hf_split, hf_subset, prompt_type)` -> (n, dim))
    for audio. `model_name`: a Hugging Face id (with `revision`) or any checkpoint route; `checkpoint` overrides
    it (the name then only labels the results). `layers`, `tokens` (cls or mean): the module docstring;
    `options` go to `sslam.embeddings.load_encoder` (which, window, hop, batch_size, dtype...)."""

    def __init__(self, model_name: str = SSLAM_HUB_ID, revision: str | None = None, *, device: str | None = None,
                 checkpoint: str | Path | None = None, layers: int | str | Sequence[int] = -1, tokens: str = "cls",
                 **options: Any) -> None:
        self.tokens = token_name(tokens)
        if self.tokens not in SCENE_TOKENS:
            raise SslamError(f"MAEB needs one vector per clip: tokens must be cls or mean, got {tokens!r}")
        options.pop("embed_dim", None)  # mteb passes the meta's width back; the checkpoint decides it
        self.model: Embedder = load_encoder(checkpoint or checkpoint_route(model_name, revision),
                                            device=device or "auto", layers=layers, **options)
        self.model_name, self.revision = model_name, revision

    @property
    def sampling_rate(self) -> int:
        return self.model.sample_rate

    def clip_vectors(self, waveforms: Sequence[Any], sampling_rate: int | None = None) -> np.ndarray:
        """1-D waveforms of any lengths -> (n, dim) float32, each clip embedded on its own (no batch padding)."""
        clips = self.model.embed([torch.as_tensor(np.asarray(w), dtype=torch.float32) for w in waveforms],
                                 sampling_rate)
        return torch.stack([self.model._features(clip.tokens(self.tokens)) for clip in clips]).cpu().numpy()

    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, prompt_type: Any = None,
               **kwargs: Any) -> np.ndarray:
        """A DataLoader of mteb rows holding "audio" ({"array", "sampling_rate"}) -> (n, dim) float32."""
        if "audio" not in inputs.dataset.column_names:
            raise ValueError(f"{type(self).__name__} embeds audio; task {task_metadata.name} gives "
                             f"{', '.join(inputs.dataset.column_names)}")
        # mteb's collator: resampled to 16 kHz, channels averaged; lengths left as they are
        inputs.collate_fn = AudioCollator(target_sampling_rate=self.sampling_rate)
        vectors = []
        show = kwargs.get("show_progress_bar", False)
        from tqdm.auto import tqdm

        for batch in tqdm(inputs, disable=not show, desc="sslam"):
            vectors.append(self.clip_vectors([np.asarray(audio["array"]).reshape(-1) for audio in batch["audio"]]))
        dim = self.model.feature_size
        return np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)


def encoder_parameters(config: Any) -> int:
    """The trainable parameters of an AudioEncoder of this config (`AudioEncoder.num_parameters()`), counted
    without building it: patch embedding, CLS, pre-blocks LayerNorm, then per block qkv, proj, two LayerNorms
    and the MLP."""
    width, hidden, patch = config.embed_dim, config.mlp_hidden_dim, config.patch_size
    block = (width * 3 * width + (3 * width if config.qkv_bias else 0) + width * width + width + 4 * width
             + width * hidden + hidden + hidden * width + width)
    return width * patch * patch + width + width + 2 * width + config.depth * block


def sslam_model_meta(checkpoint: str = SSLAM_HUB_ID, revision: str | None = None, *, name: str | None = None,
                     layers: int | str | Sequence[int] = -1, tokens: str = "cls",
                     training_datasets: set[str] | None = None, **options: Any) -> ModelMeta:
    """An mteb `ModelMeta` whose `load_model()` gives a SSLAMMtebEncoder. `checkpoint`: a Hugging Face id (the
    released SSLAM by default) or any checkpoint route; `name`: the label of the results (default: the id, or
    the route's file name); `revision`: the hub commit to pin (None: the hub's main at load time, which mteb
    records as no revision). The width and parameter count come from the architecture: a local checkpoint's
    own, else ViT-B/16 (the released EAT-base and SSLAM models), which a hub id is not downloaded to learn."""
    is_hub_id = not (checkpoint.startswith("hf:") or Path(checkpoint).exists() or checkpoint == "random")
    config = EncoderConfig() if is_hub_id or checkpoint.startswith("hf:") or checkpoint == "random" else \
        read_checkpoint(checkpoint, num_heads=options.get("num_heads"),
                        num_mel_bins=options.get("num_mel_bins")).encoder_config
    parameters = encoder_parameters(config)
    chosen, _ = parse_layers(layers, config.depth)
    label = name or (checkpoint if is_hub_id else f"sslam/{Path(checkpoint.split(':')[-1]).stem or 'checkpoint'}")
    loader_kwargs = {"layers": layers, "tokens": tokens, **options}
    if not is_hub_id:
        loader_kwargs["checkpoint"] = checkpoint
    return ModelMeta(
        loader=SSLAMMtebEncoder,
        loader_kwargs=loader_kwargs,
        name=label,
        revision=revision,
        release_date=None,
        languages=None,
        n_parameters=parameters,
        memory_usage_mb=round(parameters * 4 / 2**20),
        max_tokens=None,
        embed_dim=config.embed_dim * len(chosen),
        license=None,  # not stated in anything this project could read offline
        open_weights=True,
        public_training_code="https://github.com/ta012/SSLAM",
        public_training_data="https://research.google.com/audioset/",
        framework=["PyTorch"],
        reference=f"https://huggingface.co/{checkpoint}" if is_hub_id else None,
        similarity_fn_name="cosine",
        use_instructions=False,
        # SSLAM's two pretraining stages (EAT-style, then with mixtures) see AudioSet-2M, without its labels
        training_datasets={"AudioSet"} if training_datasets is None else training_datasets,
        modalities=["audio"],
        citation=CITATION,
    )


__all__ = ["SSLAMMtebEncoder", "checkpoint_route", "sslam_model_meta"]
