"""The pre-training objective of both stages as one nn.Module (paper §3.1-3.3, Algorithm 1; spec §3-§7).

Stage 1 (EAT): each clip is cloned C times with a different inverse block mask; the student encodes
the visible tokens, the decoder predicts every position, and the loss regresses the masked positions
(local) and the student's CLS output (global) onto an EMA teacher's view of the unmasked clip.

Stage 2 (SSLAM): the batch is partially mixed with itself rolled by one clip; the student sees
[unmixed B; mixed B] with the SAME masks for clip i in both halves; each half is regressed onto the
teacher's view of the same input, and the mixed half additionally onto the source retention target
(source_retention.py) or, in the MixIT variant, through the concept-separation head (mixit.py).
Which halves and terms are active is configuration (config.py's variants).

Every random input of a step (masks, mixing regions, decoder noise) can be passed to `forward`
instead of drawn, which reproduces a step of another implementation exactly (docs/objective.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from sslam.fingerprints import compiled
from sslam.runtime.errors import ConfigError, SslamError
from sslam.model.config import DecoderConfig, EncoderConfig
from sslam.model.decoder import Decoder2d
from sslam.model.encoder import AudioEncoder, gather_tokens
from sslam.model.teacher import EMATeacher
from sslam.objective.config import MIXED_TERMS, SRL_TERMS, UNMIXED_TERMS, ObjectiveConfig, resolve_layer_count
from sslam.objective.losses import LossTerm, global_loss, local_loss, term_weights, total_loss
from sslam.objective.masking import clone_masks, clone_rows, kept_and_masked_index, kept_cells
from sslam.objective.mixing import MixedHalf, MixRegions, draw_regions, mix_frames
from sslam.objective.mixit import MixItSettings, build_heads, mixit_terms
from sslam.objective.source_retention import SrlSettings, source_retention_terms
from sslam.objective.targets import TeacherTargets, teacher_targets_of_batches

# XOR-ed into the seed for the decoder-noise generator: on the CPU both generators are MT19937, and the
# same seed would make the noise replay the numbers of the masks.
NOISE_SEED_STREAM = 0x9E3779B97F4A7C15
GENERATOR_STATE_KEYS = ("masks_and_mixing", "decoder_noise", "decoder_noise_device")


class RandomStateError(SslamError, ValueError):
    """A saved random state that cannot be restored exactly (other format, other device type)."""


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor                 # the weighted total, to backpropagate
    terms: dict[str, torch.Tensor]     # each term's plain mean (detached), for logging
    weights: dict[str, float]          # each term's factor in `loss`
    num_sequences: int                 # student sequences = halves × B × clones
    num_masked_tokens: int             # masked tokens over the student batch
    regions: MixRegions | None         # this batch's mixing regions (None without a mixed half)
    summary: torch.Tensor | None = None  # [loss, each term's mean] (detached), in `terms` order: one tensor to log


class PretrainingObjective(nn.Module):
    """Holds `student` (AudioEncoder), `decoder` (Decoder2d), `teacher` (EMATeacher) and, for MixIT,
    `mixit_heads`.

    Two generators make a run reproducible and resumable (generator_state()/set_generator_state()):
    masks, mixing regions and the mix_probability coin come from `generator` (a CPU torch.Generator,
    seeded with `seed` when not given); the decoder noise comes from a generator on the batch's device,
    created at the first forward and seeded from the first one's seed (XOR NOISE_SEED_STREAM), so the
    60 M noise values of a ViT-B step never cross the bus.
    `norm_stats` = (mean, std) of the fbank normalisation, needed by mix_op waveform_mean only.
    """

    def __init__(self, encoder_cfg: EncoderConfig, decoder_cfg: DecoderConfig, objective_cfg: ObjectiveConfig,
                 stage: int, generator: torch.Generator | None = None, seed: int = 0,
                 norm_stats: tuple[float, float] | None = None) -> None:
        super().__init__()
        if stage not in (1, 2):
            raise ConfigError(f"pre-training stage must be 1 or 2, got {stage}")
        self.config = cfg = objective_cfg
        self.stage = stage
        self.student = AudioEncoder(encoder_cfg)
        self.decoder = Decoder2d(decoder_cfg, encoder_cfg.embed_dim)
        self.teacher = EMATeacher(self.student)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.__dict__["_compute"] = self.compute       # compile_step() replaces it with the compiled module
        self._output_dtypes: dict[tuple[str, torch.dtype | None], torch.dtype] = {}
        self.noise_seed = self.generator.initial_seed() ^ NOISE_SEED_STREAM
        self._noise_generator: torch.Generator | None = None
        self._pending_noise_state: tuple[str, torch.Tensor] | None = None
        if norm_stats is None and cfg.norm_mean is not None:
            norm_stats = (cfg.norm_mean, cfg.norm_std)
        self.norm_stats = norm_stats

        depth = encoder_cfg.depth
        self.local_layers = resolve_layer_count(cfg.local_target_layers, depth, "local_target_layers")
        self.mixit: MixItSettings | None = None
        if stage == 1:
            self.clones = cfg.clones_stage1
            self.halves: tuple[str, ...] = (cfg.stage1_input,)
            stage1_global = resolve_layer_count(cfg.global_target_layers_stage1, depth, "global_target_layers_stage1")
            self.global_layers = {"unmixed": stage1_global, "mixed": stage1_global}
            self.enabled_terms = {f"local_{cfg.stage1_input}", f"global_{cfg.stage1_input}"}
        else:
            self.clones = cfg.clones_stage2
            self.halves = tuple(half for half, seen in (("unmixed", cfg.student_sees_unmixed),
                                                        ("mixed", cfg.student_sees_mixed)) if seen)
            mixed_global = resolve_layer_count(cfg.global_target_layers_stage2, depth, "global_target_layers_stage2")
            unmixed_setting = cfg.global_target_unmixed_layers
            unmixed_global = (mixed_global if unmixed_setting is None
                              else resolve_layer_count(unmixed_setting, depth, "global_target_unmixed_layers"))
            self.global_layers = {"unmixed": unmixed_global, "mixed": mixed_global}
            self.enabled_terms = {name for name in UNMIXED_TERMS + MIXED_TERMS + SRL_TERMS if getattr(cfg, name)}
            if cfg.mixit:
                self.mixit = MixItSettings.from_config(cfg)
                self.enabled_terms |= set(self.mixit.term_names)
                # A pretraining-only trainable module, like the decoder: optimised, snapshotted, never exported.
                self.mixit_heads = build_heads(self.mixit, encoder_cfg.embed_dim)
        self.srl = SrlSettings.from_config(cfg, self.local_layers)
        if "mixed" in self.halves and cfg.mix_op == "waveform_mean" and self.norm_stats is None:
            raise ConfigError("mix_op waveform_mean needs norm_stats=(mean, std) or objective.norm_mean/norm_std")

    @property
    def uses_srl(self) -> bool:
        return bool(self.enabled_terms & {"srl_local", "srl_global"})

    @property
    def needs_base_targets(self) -> bool:
        """Whether the mixed-half losses need the teacher's view of the unmixed clips."""
        return self.uses_srl or self.mixit is not None

    def pretraining_heads(self) -> dict[str, nn.Module]:
        """Trainable modules beside the student and the decoder (MixIT's head), by snapshot key."""
        return {"mixit": self.mixit_heads} if self.mixit is not None else {}

    def trainable_modules(self) -> dict[str, nn.Module]:
        """What the optimiser updates, by name: the teacher only ever moves by EMA."""
        return {"student": self.student, "decoder": self.decoder, **self.pretraining_heads()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.trainable_modules().values() for p in module.parameters()]

    # ------------------------------------------------------------------ randomness
    def generator_state(self) -> dict[str, Any]:
        """{"masks_and_mixing": CPU generator state, "decoder_noise": noise generator state or None
        (not created yet: it will be seeded afresh), "decoder_noise_device": its device type or None}."""
        if self._noise_generator is not None:
            noise_state, noise_device = self._noise_generator.get_state(), self._noise_generator.device.type
        elif self._pending_noise_state is not None:
            noise_device, noise_state = self._pending_noise_state
        else:
            noise_state, noise_device = None, None
        return {"masks_and_mixing": self.generator.get_state(), "decoder_noise": noise_state,
                "decoder_noise_device": noise_device}

    def set_generator_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or set(state) != set(GENERATOR_STATE_KEYS):
            found = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise RandomStateError(f"cannot resume exactly: the objective's random state must hold "
                                   f"{', '.join(GENERATOR_STATE_KEYS)}, got {found} (a snapshot of an older "
                                   f"version?); start a new run folder")
        self.generator.set_state(state["masks_and_mixing"])
        # The noise generator is (re)created on the batch's device at the next draw, from this state.
        self._noise_generator = None
        self._pending_noise_state = (None if state["decoder_noise"] is None
                                     else (state["decoder_noise_device"], state["decoder_noise"]))

    def noise_generator(self, device: torch.device) -> torch.Generator:
        """The decoder-noise generator on `device`, created (and restored or seeded) on first use."""
        device = torch.device(device)
        current = self._noise_generator
        if current is not None and current.device.type == device.type and (
                device.index is None or current.device.index == device.index):
            return current
        generator = torch.Generator(device=device)
        if self._pending_noise_state is not None:
            saved_device, saved_state = self._pending_noise_state
            if saved_device != device.type:
                raise RandomStateError(f"cannot resume exactly: the decoder-noise generator was saved on "
                                       f"{saved_device}, this run draws on {device.type}")
            generator.set_state(saved_state)
            self._pending_noise_state = None
        else:
            generator.manual_seed(self.noise_seed)
        self._noise_generator = generator
        return generator

    # ------------------------------------------------------------------ teacher
    def update_teacher(self, decay: float) -> None:
        """EMA step teacher ← decay·teacher + (1 − decay)·student, after an optimizer update. The decay
        schedule belongs to the training stage (TrainConfig.ema_*, `sslam.model.teacher.ema_decay`)."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.teacher.update(self.student, decay)

    def load_stage1(self, checkpoint: Any) -> dict[str, str]:
        """Initialise Stage 2 from a Stage-1 `LoadedCheckpoint`: student from the Stage-1 student,
        teacher from the Stage-1 TEACHER (the official `_ema`), decoder when present.

        Returns where each part came from. A checkpoint without a teacher (e.g. a student-only
        export) falls back to copying the student, recorded as "teacher": "stage1_student".
        """
        sources = {"student": "stage1_student"}
        self._load_into(self.student, checkpoint.student, "student")
        teacher_state = getattr(checkpoint, "teacher", None)
        if teacher_state is not None:
            self._load_into(self.teacher.encoder, teacher_state, "teacher")
            sources["teacher"] = "stage1_teacher"
        else:
            self._load_into(self.teacher.encoder, checkpoint.student, "teacher")
            sources["teacher"] = "stage1_student"
        self.teacher.encoder.float().requires_grad_(False)
        decoder_state = getattr(checkpoint, "decoder", None)
        if decoder_state is not None:
            self._load_into(self.decoder, decoder_state, "decoder")
            sources["decoder"] = "stage1_decoder"
        else:
            sources["decoder"] = "fresh"
        return sources

    @staticmethod
    def _load_into(module: nn.Module, state: nn.Module | Mapping[str, torch.Tensor], what: str) -> None:
        if isinstance(state, nn.Module):
            state = state.state_dict()
        try:
            module.load_state_dict(state)
        except RuntimeError as error:
            raise ConfigError(f"the Stage-1 {what} does not fit this model's configuration: {error}") from error

    # ------------------------------------------------------------------ forward
    def draw_mix_regions(self, num_frames: int) -> MixRegions:
        cfg = self.config
        return draw_regions(cfg.mix_mode, num_frames, self.student.config.patch_size, cfg.region_fraction,
                            self.generator, cfg.mix_probability)

    def draw_masks(self, batch_size: int, grid: tuple[int, int]) -> torch.Tensor:
        """(halves·B·C, L) student masks, True = masked. Row h·B·C + i·C + j is clone j of clip i in
        half h; the mixed copy of clip i reuses the unmixed copy's C masks (spec §3)."""
        cfg = self.config
        masks_per_clip = clone_masks(batch_size, self.clones, grid, cfg.mask_prob, cfg.mask_prob_adjust,
                                     cfg.block_size, self.generator)
        return masks_per_clip.repeat(len(self.halves), 1)

    def draw_decoder_noise(self, num_sequences: int, num_masked: int, device: torch.device | str,
                           dtype: torch.dtype | None = None) -> torch.Tensor:
        """(N, M, D) noise tokens for the M masked positions of each student sequence, drawn on `device`."""
        return self.decoder.draw_noise(num_sequences, num_masked, self.noise_generator(torch.device(device)),
                                       device, dtype)

    def _checked_regions(self, regions: MixRegions, num_frames: int) -> MixRegions:
        if "mixed" not in self.halves:
            raise ValueError(f"regions were given but this objective (stage {self.stage}) has no mixed half")
        if not isinstance(regions, MixRegions):
            raise ValueError(f"regions must be a MixRegions, got {type(regions).__name__}")
        patch_size = self.student.config.patch_size
        if (regions.num_frames, regions.patch_size) != (num_frames, patch_size):
            raise ValueError(f"regions are for {regions.num_frames} frames / patch {regions.patch_size}, "
                             f"the batch has {num_frames} frames / patch {patch_size}")
        return regions

    def _checked_masks(self, masks: torch.Tensor, batch_size: int, grid: tuple[int, int]) -> torch.Tensor:
        expected = (len(self.halves) * batch_size * self.clones, grid[0] * grid[1])
        if masks.dtype != torch.bool or tuple(masks.shape) != expected:
            raise ValueError(f"masks must be a bool tensor of shape {expected} (halves·B·C sample-major, L; "
                             f"True = masked), got {masks.dtype} {tuple(masks.shape)}")
        return masks

    def forward(self, fbank: torch.Tensor, masks: torch.Tensor | None = None, regions: MixRegions | None = None,
                decoder_noise: torch.Tensor | None = None) -> ObjectiveOutput:
        """fbank: (B, T, F) normalised log-mel (or (B, 1, T, F)).

        Each random input is drawn when None and used as given otherwise (nothing is drawn for it):
        masks (halves·B·C, L) bool, True = masked, in draw_masks' row order; regions, a MixRegions
        (mixed half only); decoder_noise (halves·B·C, M, D), the tokens of each row's M masked
        positions in ascending position order, as placed (already scaled by mask_noise_std).

        Two parts: `prepare` draws on the host and moves the step's inputs to the batch's device, then
        `compute` (compiled with `compile_step`) runs the teacher, the student, the decoder and the losses
        from tensors alone. Neither reads a value back from the device for drawn inputs.
        """
        step = self.prepare(fbank, masks, regions, decoder_noise)
        loss, summary, names, weights = self._compute(step)
        return ObjectiveOutput(
            loss=loss,
            terms=dict(zip(names, summary[1:].unbind())),
            weights=weights,
            num_sequences=step.masks.shape[0],
            num_masked_tokens=step.masks.shape[0] * step.masked_index.shape[1],
            regions=step.regions,
            summary=summary,
        )

    def prepare(self, fbank: torch.Tensor, masks: torch.Tensor | None = None, regions: MixRegions | None = None,
                decoder_noise: torch.Tensor | None = None) -> "StepInputs":
        """The host side of a forward (see `forward`): draws what is not given, in the order of the official
        step (regions, masks, decoder noise), and puts every input of `compute` on the batch's device.

        Drawn masks keep ⌊L(1−p)⌋ cells in every row by construction, so the kept/masked split needs no
        count from the device; given masks are counted and checked once (a read of their values)."""
        if fbank.dim() == 4:
            fbank = fbank.squeeze(1)
        batch_size, num_frames, _ = fbank.shape
        grid = self.student.grid(num_frames)
        device = fbank.device

        if regions is not None:
            regions = self._checked_regions(regions, num_frames)
        elif "mixed" in self.halves:
            regions = self.draw_mix_regions(num_frames)
        if masks is not None:
            masks, num_kept = self._checked_masks(masks, batch_size, grid), None
        else:
            masks, num_kept = self.draw_masks(batch_size, grid), kept_cells(grid[0] * grid[1], self.config.mask_prob)
        mixit_tokens = self._mixit_tokens(masks, regions, grid)
        masks = host_to_device(masks, device)
        kept, masked = kept_and_masked_index(masks, num_kept)
        if decoder_noise is None:
            decoder_noise = self.draw_decoder_noise(masks.shape[0], masked.shape[1], device,
                                                    self.student_output_dtype(device))
        unmixed_frames = mixed_tokens = None
        if regions is not None:
            mixed_tokens = regions.mixed_token_index(grid[1], device)
            if not regions.is_identity:
                unmixed_frames = regions.unmixed_frame_mask(device)
        return StepInputs(fbank, masks, kept, masked, decoder_noise.to(device), grid, regions, unmixed_frames,
                          mixed_tokens, mixit_tokens)

    def _mixit_tokens(self, masks: torch.Tensor, regions: MixRegions | None, grid: tuple[int, int]) -> int | None:
        """MixIT's patch-level token count: the mixed half's masked tokens in mixed rows, counted where the
        masks were drawn (the host), so that the device never reports it."""
        if self.mixit is None or "patch" not in self.mixit.levels or regions is None:
            return None
        rows = masks.shape[0] // len(self.halves)
        start = self.halves.index("mixed") * rows
        in_mixed_rows = masks[start:start + rows] & regions.mixed_token_mask(grid[1], masks.device)[None, :]
        return int(in_mixed_rows.sum())

    def student_output_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype of the student's output under the autocast state in force: the decoder noise is drawn
        in it, before the student runs. The output comes from a LayerNorm, whose input has the autocast
        dtype, so one small probe of that norm per autocast state answers (CUDA autocast gives float32,
        CPU autocast keeps bfloat16)."""
        enabled = torch.is_autocast_enabled(device.type)
        key = (device.type, torch.get_autocast_dtype(device.type) if enabled else None)
        if key not in self._output_dtypes:
            norm = self.student.pre_norm
            probe = torch.zeros(1, norm.normalized_shape[0], device=device, dtype=key[1] or norm.weight.dtype)
            with torch.no_grad():
                self._output_dtypes[key] = norm(probe).dtype
        return self._output_dtypes[key]

    def compile_step(self) -> None:
        """Run `compute` through torch.compile from now on (`sslam.fingerprints.compiled` tells the code
        recorder). The host side stays eager: its draws and the regions' row numbers would otherwise be
        traced as constants and recompile the step at every new draw."""
        self.__dict__["_compute"] = compiled(ObjectiveStep(self))  # not a submodule: no second path to the weights

    def compute(self, step: "StepInputs") -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], dict[str, float]]:
        """The device side of a forward: (loss, summary = [loss, each term's mean] detached, term names,
        each term's weight in the loss), from the tensors of `step` and shapes alone."""
        fbank, cfg, clones = step.fbank, self.config, self.clones
        batch_size = fbank.shape[0]
        inputs = {"unmixed": fbank}
        if "mixed" in self.halves:
            inputs["mixed"] = (fbank if step.unmixed_frames is None
                               else mix_frames(fbank, step.unmixed_frames, cfg.mix_op, self.norm_stats))

        # Teacher: full, unmasked clips (one row per clip, not per clone), every half it needs in one pass.
        needs_teacher = sorted(set(self.halves) | ({"unmixed"} if self.needs_base_targets else set()))
        targets: dict[str, TeacherTargets] = teacher_targets_of_batches(
            self.teacher.encoder, {half: inputs[half] for half in needs_teacher}, self.local_layers,
            self.global_layers)

        # Student: C masked clones per clip of each half.
        student_batch = torch.cat([inputs[half] for half in self.halves]) if len(self.halves) > 1 \
            else inputs[self.halves[0]]
        # Embed once per clip and clone the tokens (as the official code does), then drop the masked ones.
        tokens = clone_rows(self.student.embed(student_batch), clones)
        encoded = self.student.forward_blocks(self.student.add_cls_and_norm(gather_tokens(tokens, step.keep_index)))
        visible = encoded[:, 1:]
        predictions = self.decoder(visible, step.keep_index, step.grid, step.decoder_noise,
                                   masked_index=step.masked_index)
        cls_outputs = encoded[:, 0]

        terms: dict[str, LossTerm] = {}
        rows_per_half = batch_size * clones
        for position, half in enumerate(self.halves):
            rows = slice(position * rows_per_half, (position + 1) * rows_per_half)
            half_mask, half_masked = step.masks[rows], step.masked_index[rows]
            half_prediction, half_cls = predictions[rows], cls_outputs[rows]
            if f"local_{half}" in self.enabled_terms:
                local_target = clone_rows(targets[half].local, clones)
                terms[f"local_{half}"] = local_loss(half_prediction, local_target, half_mask, masked_index=half_masked)
            if f"global_{half}" in self.enabled_terms:
                pooled_target = clone_rows(targets[half].pooled, clones)
                terms[f"global_{half}"] = global_loss(half_cls, pooled_target)
            if half == "mixed" and self.needs_base_targets:
                mixed = MixedHalf(predictions=half_prediction, cls=half_cls, mask=half_mask, fbank=fbank,
                                  base=targets["unmixed"], regions=None, clones=clones, masked_index=half_masked,
                                  mixed_tokens=step.mixed_tokens, mixit_tokens=step.mixit_tokens)
                if self.uses_srl:
                    terms.update(source_retention_terms(self.teacher.encoder, mixed, self.srl))
                if self.mixit is not None:
                    terms.update(mixit_terms(self.mixit_heads, mixed))

        num_masked_tokens = step.masks.shape[0] * step.masked_index.shape[1]
        weights = term_weights(terms, cfg.loss_weighting, num_masked_tokens)
        loss = total_loss(terms, weights)
        summary = torch.stack([loss.detach(), *(term.value.detach() for term in terms.values())])
        return loss, summary, tuple(terms), weights


@dataclass
class StepInputs:
    """Everything `PretrainingObjective.compute` needs for one step, on the batch's device: the batch and the
    step's random inputs as tensors, and the shapes the host knows (the kept/masked split, the grid)."""

    fbank: torch.Tensor                   # (B, T, F)
    masks: torch.Tensor                   # (halves·B·C, L) bool, True = masked
    keep_index: torch.Tensor              # (halves·B·C, K) kept positions, ascending
    masked_index: torch.Tensor            # (halves·B·C, M) masked positions, ascending
    decoder_noise: torch.Tensor           # (halves·B·C, M, D)
    grid: tuple[int, int]                 # (time patches, frequency patches)
    # The regions, for the output only: compute reads the two tensors below, never these row numbers, which
    # change at every draw and would make a compiled step recompile.
    regions: MixRegions | None = None
    unmixed_frames: torch.Tensor | None = None  # (T,) True where the mixed half is its base clip; None: no mixing
    mixed_tokens: torch.Tensor | None = None    # (L_mixed,) positions of the mixed rows' tokens, ascending
    mixit_tokens: int | None = None             # MixIT: masked tokens of the mixed half in mixed rows


class ObjectiveStep(nn.Module):
    """`PretrainingObjective.compute` as a module of its own, so that it can be compiled by itself and named to
    the code recorder (`sslam.fingerprints.compiled` notes a module's module). It holds the objective without
    registering it: the objective's parameters and state_dict stay the objective's alone."""

    def __init__(self, objective: PretrainingObjective) -> None:
        super().__init__()
        self.__dict__["objective"] = objective

    def forward(self, step: StepInputs):
        return self.objective.compute(step)


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the device: a copy from ordinary (pageable) memory to a
    GPU waits for every kernel queued before it, a copy from pinned memory does not."""
    if tensor.device == device or device.type == tensor.device.type == "cpu":
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
