"""The pre-training objective of both stages as one nn.Module (paper §3.1-3.3, Algorithm 1; spec §3-§7).

Stage 1 (EAT): each clip is cloned C times with a different inverse block mask; the student encodes
the visible tokens, the decoder predicts every position, and the loss regresses the masked positions
(local) and the student's CLS output (global) onto an EMA teacher's view of the unmasked clip.

Stage 2 (SSLAM): the batch is partially mixed with itself rolled by one clip; the student sees
[unmixed B; mixed B] with the SAME masks for clip i in both halves; each half is regressed onto the
teacher's view of the same input, and the mixed half additionally onto the source retention target
(source_retention.py). Which halves and terms are active is configuration (config.py's variants).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from sslam.errors import ConfigError
from sslam.model.config import DecoderConfig, EncoderConfig
from sslam.model.decoder import Decoder2d
from sslam.model.encoder import AudioEncoder, gather_tokens
from sslam.model.teacher import EMATeacher, ema_decay
from sslam.objective.config import ObjectiveConfig, resolve_layer_count
from sslam.objective.losses import LossTerm, global_loss, local_loss, term_weights, total_loss
from sslam.objective.masking import clone_masks, keep_index
from sslam.objective.mixing import MixRegions, draw_regions, mix_batch, no_regions_mixed
from sslam.objective.source_retention import source_retention_terms
from sslam.objective.targets import TeacherTargets, teacher_targets


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor                 # the weighted total, to backpropagate
    terms: dict[str, torch.Tensor]     # each term's plain mean (detached), for logging
    weights: dict[str, float]          # each term's factor in `loss`
    num_sequences: int                 # student sequences = halves × B × clones
    num_masked_tokens: int             # masked tokens over the student batch
    regions: MixRegions | None         # this batch's mixing regions (None without a mixed half)


class PretrainingObjective(nn.Module):
    """Holds `student` (AudioEncoder), `decoder` (Decoder2d) and `teacher` (EMATeacher).

    Masks and mixing positions come from `generator` (a CPU torch.Generator, seeded with `seed` when
    not given) so that a run is reproducible and resumable via generator_state()/set_generator_state().
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
        if norm_stats is None and cfg.norm_mean is not None:
            norm_stats = (cfg.norm_mean, cfg.norm_std)
        self.norm_stats = norm_stats

        depth = encoder_cfg.depth
        self.local_layers = resolve_layer_count(cfg.local_target_layers, depth, "local_target_layers")
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
            self.enabled_terms = {name for name in ("local_unmixed", "global_unmixed", "local_mixed",
                                                    "global_mixed", "srl_local", "srl_global") if getattr(cfg, name)}
        if "mixed" in self.halves and cfg.mix_op == "waveform_mean" and self.norm_stats is None:
            raise ConfigError("mix_op waveform_mean needs norm_stats=(mean, std) or objective.norm_mean/norm_std")

    @property
    def uses_srl(self) -> bool:
        return bool(self.enabled_terms & {"srl_local", "srl_global"})

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student and decoder parameters: the teacher only ever moves by EMA."""
        return [*self.student.parameters(), *self.decoder.parameters()]

    # ------------------------------------------------------------------ randomness
    def generator_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_generator_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    # ------------------------------------------------------------------ teacher
    def teacher_decay(self, step: int) -> float:
        cfg = self.config
        return ema_decay(step, cfg.ema_decay_start, cfg.ema_decay_end, cfg.ema_anneal_steps)

    def update_teacher(self, step: int) -> float:
        """EMA step after the student's `step`-th optimizer update of this stage (1, 2, …; the count
        restarts in Stage 2, so the decay re-anneals from ema_decay_start). Returns the decay used."""
        decay = self.teacher_decay(step)
        self.teacher.update(self.student, decay)
        return decay

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
        patch_size = self.student.config.patch_size
        if cfg.mix_probability < 1.0:
            skip = torch.rand(1, generator=self.generator).item() >= cfg.mix_probability
            if skip:
                return no_regions_mixed(num_frames, patch_size)
        return draw_regions(cfg.mix_mode, num_frames, patch_size, cfg.region_fraction, self.generator)

    def draw_masks(self, batch_size: int, grid: tuple[int, int]) -> torch.Tensor:
        """(halves·B·C, L) student masks, True = masked. Row h·B·C + i·C + j is clone j of clip i in
        half h; the mixed copy of clip i reuses the unmixed copy's C masks (spec §3)."""
        cfg = self.config
        masks_per_clip = clone_masks(batch_size, self.clones, grid, cfg.mask_prob, cfg.mask_prob_adjust,
                                     cfg.block_size, self.generator)
        return masks_per_clip.repeat(len(self.halves), 1)

    def forward(self, fbank: torch.Tensor) -> ObjectiveOutput:
        """fbank: (B, T, F) normalised log-mel (or (B, 1, T, F))."""
        if fbank.dim() == 4:
            fbank = fbank.squeeze(1)
        batch_size, num_frames, _ = fbank.shape
        grid = self.student.grid(num_frames)
        cfg, clones = self.config, self.clones

        regions = self.draw_mix_regions(num_frames) if "mixed" in self.halves else None
        inputs = {"unmixed": fbank}
        if regions is not None:
            inputs["mixed"] = mix_batch(fbank, regions, cfg.mix_op, self.norm_stats)

        # Teacher: full, unmasked clips (one row per clip, not per clone).
        needs_teacher = set(self.halves) | ({"unmixed"} if self.uses_srl else set())
        targets: dict[str, TeacherTargets] = {
            half: teacher_targets(self.teacher.encoder, inputs[half], self.local_layers, self.global_layers[half])
            for half in sorted(needs_teacher)
        }

        # Student: C masked clones per clip of each half.
        masks = self.draw_masks(batch_size, grid).to(fbank.device)
        kept = keep_index(masks)
        student_batch = torch.cat([inputs[half] for half in self.halves])
        # Embed once per clip and clone the tokens (as the official code does), then drop the masked ones.
        tokens = self.student.embed(student_batch).repeat_interleave(clones, dim=0)
        encoded = self.student.forward_blocks(self.student.add_cls_and_norm(gather_tokens(tokens, kept)))
        predictions = self.decoder(encoded[:, 1:], kept, grid)
        cls_outputs = encoded[:, 0]

        terms: dict[str, LossTerm] = {}
        rows_per_half = batch_size * clones
        for position, half in enumerate(self.halves):
            rows = slice(position * rows_per_half, (position + 1) * rows_per_half)
            half_mask, half_prediction, half_cls = masks[rows], predictions[rows], cls_outputs[rows]
            if f"local_{half}" in self.enabled_terms:
                local_target = targets[half].local.repeat_interleave(clones, dim=0)
                terms[f"local_{half}"] = local_loss(half_prediction, local_target, half_mask)
            if f"global_{half}" in self.enabled_terms:
                pooled_target = targets[half].pooled.repeat_interleave(clones, dim=0)
                terms[f"global_{half}"] = global_loss(half_cls, pooled_target)
            if half == "mixed" and self.uses_srl:
                terms.update(source_retention_terms(
                    self.teacher.encoder, fbank, regions, targets["unmixed"].local, half_prediction, half_cls,
                    half_mask, clones, self.local_layers, cfg.srl_aggregation,
                    with_local="srl_local" in self.enabled_terms, with_global="srl_global" in self.enabled_terms))

        num_masked_tokens = int(masks.sum())
        weights = term_weights(terms, cfg.loss_weighting, num_masked_tokens)
        return ObjectiveOutput(
            loss=total_loss(terms, weights),
            terms={name: term.value.detach() for name, term in terms.items()},
            weights=weights,
            num_sequences=masks.shape[0],
            num_masked_tokens=num_masked_tokens,
            regions=regions,
        )
