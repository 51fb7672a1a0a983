"""Early fusion of per-segment audio and visual features.

One step of T is one feature segment (``segment_seconds`` of the clip, e.g. 1 s, or 16
frames for XD-Violence features); audio and visual features share that grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FUSION_MODES", "FUSION_NORMS", "EarlyFusion", "MaskedBatchNorm"]

FUSION_MODES = ("early", "audio", "visual")
FUSION_NORMS = ("layer", "layer+batch")


class EarlyFusion(nn.Module):
    """Per-modality LayerNorm, then concatenation ``[audio; visual]`` per step.

    Modes: ``early`` concatenates both streams (``output_dim = audio_dim + visual_dim``);
    ``audio`` and ``visual`` keep one stream only (ablations; the other input is ignored).

    A stream is switched off per clip with ``has_audio`` / ``has_visual``: it is zeroed
    *after* normalisation, so a clip without an audio track looks exactly like a clip whose
    audio was dropped by modality dropout. Padded steps (``mask`` False) are zeroed too.

    ``norm``: ``layer`` (LayerNorm per step, DESIGN.md) or ``layer+batch``: then also a
    BatchNorm per feature over the batch's valid steps, i.e. every dimension standardised
    (running statistics at evaluation). LayerNorm leaves each dimension's own scale, so a
    few high-variance dimensions of a backbone dominate; standardising them is what lifts
    a linear probe on these features from 0.80 to 0.90 test accuracy on the 12-clip
    benchmark (README, Model and training).
    """

    def __init__(
        self, audio_dim: int, visual_dim: int, *, mode: str = "early", norm: str = "layer"
    ):
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"unknown fusion mode {mode!r}; expected one of {FUSION_MODES}")
        if norm not in FUSION_NORMS:
            raise ValueError(f"unknown fusion norm {norm!r}; expected one of {FUSION_NORMS}")
        self.mode = mode
        self.norm = norm
        self.audio_norm = nn.LayerNorm(audio_dim) if mode in ("early", "audio") else None
        self.visual_norm = nn.LayerNorm(visual_dim) if mode in ("early", "visual") else None
        batch = norm == "layer+batch"
        self.audio_batch_norm = MaskedBatchNorm(audio_dim) if batch and self.audio_norm else None
        self.visual_batch_norm = MaskedBatchNorm(visual_dim) if batch and self.visual_norm else None
        self.output_dim = (audio_dim if self.audio_norm else 0) + (
            visual_dim if self.visual_norm else 0
        )

    def forward(
        self,
        audio: torch.Tensor,
        visual: torch.Tensor,
        mask: torch.Tensor | None = None,
        has_audio: torch.Tensor | None = None,
        has_visual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fuse ``audio (B, T, Da)`` and ``visual (B, T, Dv)`` into ``(B, T, output_dim)``.

        ``mask``: ``(B, T)`` bool, True on valid steps (None: all valid).
        ``has_audio`` / ``has_visual``: ``(B,)`` bool, False zeroes that stream of the clip.
        """
        parts = []
        if self.audio_norm is not None:
            a = self.audio_norm(audio)
            if self.audio_batch_norm is not None:
                a = self.audio_batch_norm(a, mask)
            parts.append(_switch(a, has_audio))
        if self.visual_norm is not None:
            v = self.visual_norm(visual)
            if self.visual_batch_norm is not None:
                v = self.visual_batch_norm(v, mask)
            parts.append(_switch(v, has_visual))
        x = torch.cat(parts, dim=-1)
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        return x


class MaskedBatchNorm(nn.Module):
    """BatchNorm per feature over the valid steps of a batch: ``(B, T, D)``, ``mask (B, T)``
    bool or None -> ``(B, T, D)``, padded steps zero. Padded steps never enter the batch
    statistics, so at evaluation (running statistics) a padded batch gives each clip's own
    result."""

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        steps = x[mask]  # (N, D)
        if self.training and steps.shape[0] < 2:  # one step has no batch statistics
            normed = F.batch_norm(
                steps,
                self.bn.running_mean,
                self.bn.running_var,
                self.bn.weight,
                self.bn.bias,
                training=False,
                eps=self.bn.eps,
            )
        else:
            normed = self.bn(steps)
        return x.new_zeros(x.shape).index_put((mask,), normed)


def _switch(x: torch.Tensor, on: torch.Tensor | None) -> torch.Tensor:
    """Zero the clips of ``x (B, T, D)`` whose flag in ``on (B,)`` is False."""
    return x if on is None else x * on.view(-1, 1, 1).to(x.dtype)
