"""AVAR-Net: early fusion of audio and visual segment features, a multi-stage TCN,
per-segment class logits and clip logits by masked temporal pooling.

Inputs are padded batches (:func:`avarnet.batching.pad_batch`): ``audio (B, T, Da)``,
``visual (B, T, Dv)``, ``mask (B, T)`` bool (True on valid steps) and ``has_audio (B,)``
bool. One step of T is one feature segment (``segment_seconds`` of the clip, or 16 frames
for XD-Violence features).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from avarnet.models.fusion import EarlyFusion
from avarnet.models.mstcn import MultiStageTCN

__all__ = ["AVARNet", "FUSIONS", "POOLINGS", "pool_clip_logits", "segment_anomaly_scores"]

FUSIONS = ("early", "audio", "visual", "late")
POOLINGS = ("mean", "topk")


def pool_clip_logits(
    logits: torch.Tensor, mask: torch.Tensor, *, pooling: str = "mean", topk_divisor: int = 16
) -> torch.Tensor:
    """Pool ``(..., B, C, T)`` segment logits over the valid steps of ``mask (B, T)``.

    ``mean``: the mean over valid steps. ``topk``: per class, the mean of the ``k`` largest
    logits, ``k = T_valid // topk_divisor + 1`` (the XD-Violence MIL rule of HL-Net, with
    ``T_valid`` the clip's own length). Returns ``(..., B, C)``.
    """
    lengths = mask.sum(-1).clamp(min=1)  # (B,)
    if pooling == "mean":
        m = mask.unsqueeze(-2).to(logits.dtype)  # (B, 1, T)
        return (logits * m).sum(-1) / lengths.unsqueeze(-1).to(logits.dtype)
    if pooling == "topk":
        k = lengths // topk_divisor + 1  # (B,), never more than T_valid
        masked = logits.masked_fill(~mask.unsqueeze(-2), float("-inf"))
        top = masked.topk(int(k.max()), dim=-1).values  # (..., B, C, k_max), descending
        keep = torch.arange(top.shape[-1], device=k.device) < k.view(-1, 1, 1)  # (B, 1, k_max)
        top = torch.where(keep, top, torch.zeros_like(top))
        return top.sum(-1) / k.unsqueeze(-1).to(logits.dtype)
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


def segment_anomaly_scores(
    segment_logits: torch.Tensor,
    *,
    normal_index: int | None,
    multilabel: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-segment anomaly score ``(B, T)`` in [0, 1] from ``segment_logits (B, T, C)``.

    Single-label (softmax) with a normal class: ``1 - p(normal)``. Multi-label (sigmoid)
    with a normal class: the largest sigmoid of the other classes. Each class there is its
    own detector and top-k training on video labels lowers the normal logit on every
    segment of an anomalous video, so ``1 - sigmoid(normal)`` marks whole videos, not
    their events; a multi-label model with the normal class alone scores
    ``1 - sigmoid(normal)``. Without a normal class: the largest class probability
    (softmax, or sigmoid for multi-label). Padded steps score 0.
    """
    probs = segment_logits.sigmoid() if multilabel else segment_logits.softmax(-1)
    if normal_index is None:
        scores = probs.max(-1).values
    elif multilabel and probs.shape[-1] > 1:
        others = torch.cat([probs[..., :normal_index], probs[..., normal_index + 1 :]], -1)
        scores = others.max(-1).values
    else:
        scores = 1.0 - probs[..., normal_index]
    if mask is not None:
        scores = scores * mask.to(scores.dtype)
    return scores


class AVARNet(nn.Module):
    """Fusion + multi-stage TCN + temporal pooling.

    ``fusion``: ``early`` (LayerNorm each modality, concatenate, one MTCN), ``audio`` or
    ``visual`` (one modality only; the other input is ignored), or ``late`` (an audio MTCN
    and a visual MTCN whose stage logits are averaged).

    ``modality_dropout``: while training, with this probability per clip, zero the audio
    or the visual stream of the clip (each half the time), never both: a clip without
    audio never loses its visual stream. Only in ``early`` and ``late`` modes. Clips with
    ``has_audio=False`` always get a zeroed audio stream, so the model learns to work then.

    ``normal_index``: the "normal" class, for :meth:`anomaly_scores`. ``multilabel``:
    clip targets are multi-hot (sigmoid/BCE) rather than one class (softmax/CE).

    ``init_kwargs`` holds every constructor argument (JSON-serialisable);
    ``create_model(model.config["name"], **model.config["kwargs"])`` rebuilds the model.
    """

    def __init__(
        self,
        audio_dim: int,
        visual_dim: int,
        num_classes: int,
        *,
        fusion: str = "early",
        fusion_norm: str = "layer",
        num_stages: int = 4,
        num_layers: int = 10,
        num_filters: int = 64,
        kernel_size: int = 3,
        dropout: float = 0.5,
        pooling: str = "mean",
        topk_divisor: int = 16,
        modality_dropout: float = 0.0,
        normal_index: int | None = None,
        multilabel: bool = False,
    ):
        # Over 60 lines because it is one flat sequence: 16 keyword arguments, their
        # checks, the record of every argument (``init_kwargs``) and the modules they build.
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if topk_divisor < 1:
            raise ValueError(f"topk_divisor must be >= 1, got {topk_divisor}")
        if not 0.0 <= modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1], got {modality_dropout}")
        if normal_index is not None and not 0 <= normal_index < num_classes:
            raise ValueError(
                f"normal_index {normal_index} is not a class index (0..{num_classes - 1})"
            )
        self.init_kwargs: dict[str, Any] = {
            "audio_dim": audio_dim,
            "visual_dim": visual_dim,
            "num_classes": num_classes,
            "fusion": fusion,
            "fusion_norm": fusion_norm,
            "num_stages": num_stages,
            "num_layers": num_layers,
            "num_filters": num_filters,
            "kernel_size": kernel_size,
            "dropout": dropout,
            "pooling": pooling,
            "topk_divisor": topk_divisor,
            "modality_dropout": modality_dropout,
            "normal_index": normal_index,
            "multilabel": multilabel,
        }
        self.model_name: str | None = None  # set by create_model
        self.num_classes = num_classes
        self.fusion_mode = fusion
        self.pooling = pooling
        self.topk_divisor = topk_divisor
        self.modality_dropout = modality_dropout
        self.normal_index = normal_index
        self.multilabel = multilabel
        # One branch (fusion -> MTCN) per mode; late fusion has an audio and a visual branch.
        modes = ("audio", "visual") if fusion == "late" else (fusion,)
        self.fusions = nn.ModuleList(
            EarlyFusion(audio_dim, visual_dim, mode=m, norm=fusion_norm) for m in modes
        )
        self.tcns = nn.ModuleList(
            MultiStageTCN(
                f.output_dim,
                num_classes,
                num_stages=num_stages,
                num_layers=num_layers,
                num_filters=num_filters,
                kernel_size=kernel_size,
                dropout=dropout,
            )
            for f in self.fusions
        )

    @property
    def config(self) -> dict[str, Any]:
        """``{"name": registered name or None, "kwargs": init_kwargs}``."""
        return {"name": self.model_name, "kwargs": dict(self.init_kwargs)}

    @property
    def receptive_field(self) -> int:
        """Segments of context that one output step sees."""
        return self.tcns[0].receptive_field

    def forward(
        self,
        audio: torch.Tensor,
        visual: torch.Tensor,
        mask: torch.Tensor | None = None,
        has_audio: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the model on a padded batch.

        Args:
            audio: ``(B, T, Da)`` audio features per segment.
            visual: ``(B, T, Dv)`` visual features per segment.
            mask: ``(B, T)`` bool, True on valid steps (None: all valid).
            has_audio: ``(B,)`` bool, False for clips without an audio track (None: all True).

        Returns a dict:
            ``stage_logits`` ``(S, B, C, T)``: every stage's segment logits, 0 on padded steps;
            ``stage_clip_logits`` ``(S, B, C)``: each stage pooled over valid steps (the loss);
            ``segment_logits`` ``(B, T, C)``: the last stage, per segment;
            ``clip_logits`` ``(B, C)``: the last stage pooled (mean or top-k mean).
        """
        b, t = visual.shape[:2]
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=visual.device)
        mask = mask.bool()
        audio_on = (
            torch.ones(b, dtype=torch.bool, device=visual.device)
            if has_audio is None
            else has_audio.to(device=visual.device, dtype=torch.bool)
        )
        visual_on = torch.ones_like(audio_on)
        if self.training and self.modality_dropout > 0 and self.fusion_mode in ("early", "late"):
            drop = torch.rand(b, device=visual.device) < self.modality_dropout
            drop_audio = torch.rand(b, device=visual.device) < 0.5
            # A clip without audio keeps its visual stream: never both off.
            visual_on = ~(drop & ~drop_audio & audio_on)
            audio_on = audio_on & ~(drop & drop_audio)
        stage_logits = torch.stack(
            [
                tcn(fuse(audio, visual, mask, audio_on, visual_on).transpose(1, 2), mask)
                for fuse, tcn in zip(self.fusions, self.tcns)
            ]
        ).mean(0)
        stage_clip_logits = pool_clip_logits(
            stage_logits, mask, pooling=self.pooling, topk_divisor=self.topk_divisor
        )
        return {
            "stage_logits": stage_logits,
            "stage_clip_logits": stage_clip_logits,
            "segment_logits": stage_logits[-1].transpose(1, 2),
            "clip_logits": stage_clip_logits[-1],
        }

    def anomaly_scores(
        self, segment_logits: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-segment anomaly score ``(B, T)`` from ``segment_logits (B, T, C)``; see
        :func:`segment_anomaly_scores` (with ``normal_index``: ``1 - p(normal)``, or the largest
        non-normal sigmoid of a multi-label model)."""
        return segment_anomaly_scores(
            segment_logits, normal_index=self.normal_index, multilabel=self.multilabel, mask=mask
        )
