"""Early fusion of per-segment audio and visual features.

One step of T is one feature segment (``segment_seconds`` of the clip, e.g. 1 s, or 16
frames for XD-Violence features); audio and visual features share that grid.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FUSION_MODES", "EarlyFusion"]

FUSION_MODES = ("early", "audio", "visual")


class EarlyFusion(nn.Module):
    """Per-modality LayerNorm, then concatenation ``[audio; visual]`` per step.

    Modes: ``early`` concatenates both streams (``output_dim = audio_dim + visual_dim``);
    ``audio`` and ``visual`` keep one stream only (ablations; the other input is ignored).

    A stream is switched off per clip with ``has_audio`` / ``has_visual``: it is zeroed
    *after* normalisation, so a clip without an audio track looks exactly like a clip whose
    audio was dropped by modality dropout. Padded steps (``mask`` False) are zeroed too.
    """

    def __init__(self, audio_dim: int, visual_dim: int, *, mode: str = "early"):
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"unknown fusion mode {mode!r}; expected one of {FUSION_MODES}")
        self.mode = mode
        self.audio_norm = nn.LayerNorm(audio_dim) if mode in ("early", "audio") else None
        self.visual_norm = nn.LayerNorm(visual_dim) if mode in ("early", "visual") else None
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
            parts.append(_switch(self.audio_norm(audio), has_audio))
        if self.visual_norm is not None:
            parts.append(_switch(self.visual_norm(visual), has_visual))
        x = torch.cat(parts, dim=-1)
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        return x


def _switch(x: torch.Tensor, on: torch.Tensor | None) -> torch.Tensor:
    """Zero the clips of ``x (B, T, D)`` whose flag in ``on (B,)`` is False."""
    return x if on is None else x * on.view(-1, 1, 1).to(x.dtype)
