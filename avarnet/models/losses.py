"""The AVAR-Net training loss: clip-level classification on every stage plus the MS-TCN
temporal smoothing term (Farha & Gall 2019, ``model.py`` of yabufarha/ms-tcn)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["avarnet_loss", "smoothing_loss"]

# MS-TCN clamps the squared log-probability jump at 16 so that true boundaries cost little.
SMOOTHING_CLAMP = 16.0


def smoothing_loss(
    stage_logits: torch.Tensor, mask: torch.Tensor, *, multilabel: bool = False
) -> torch.Tensor:
    """Sum over stages of ``mean(clamp((log p_t - log p_{t-1}.detach())**2, 0, 16))``.

    ``stage_logits (S, B, C, T)``; ``mask (B, T)``. The mean runs over classes and the
    consecutive pairs of steps that are both valid (no pair straddles padding). ``log p`` is
    the log-softmax over classes, or log-sigmoid per class for multi-label models.
    """
    logp = F.logsigmoid(stage_logits) if multilabel else F.log_softmax(stage_logits, dim=2)
    sq = (logp[..., 1:] - logp[..., :-1].detach()) ** 2  # (S, B, C, T-1)
    pairs = (mask[:, 1:] & mask[:, :-1]).unsqueeze(1).to(sq.dtype)  # (B, 1, T-1)
    n = pairs.sum() * stage_logits.shape[2]
    if n == 0:
        return stage_logits.sum() * 0.0  # no two consecutive valid steps: nothing to smooth
    per_stage = (sq.clamp(0, SMOOTHING_CLAMP) * pairs).sum(dim=(1, 2, 3)) / n
    return per_stage.sum()


def avarnet_loss(
    outputs: dict[str, torch.Tensor],
    clip_targets: torch.Tensor,
    mask: torch.Tensor,
    *,
    multilabel: bool = False,
    smoothing_weight: float = 0.15,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``sum_s CE(stage_clip_logits[s], targets) + smoothing_weight * smoothing``.

    Args:
        outputs: the model's output dict (``stage_logits (S, B, C, T)`` and
            ``stage_clip_logits (S, B, C)``, pooled the model's way).
        clip_targets: ``(B,)`` int64 class indices, or ``(B, C)`` float multi-hot when
            ``multilabel`` (then BCE-with-logits, mean over clips and classes).
        mask: ``(B, T)`` bool, True on valid steps.
        label_smoothing: the cross-entropy's label smoothing; for multi-label targets,
            each 0/1 target moves that far towards 0.5.

    Returns ``(loss, parts)``; ``parts`` holds detached scalars ``classification``,
    ``smoothing`` (unweighted) and ``loss``.
    """
    clip_logits = outputs["stage_clip_logits"]
    if multilabel:
        targets = clip_targets.to(clip_logits.dtype)
        if label_smoothing:
            targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
        cls = sum(F.binary_cross_entropy_with_logits(s, targets) for s in clip_logits)
    else:
        cls = sum(
            F.cross_entropy(s, clip_targets, label_smoothing=label_smoothing) for s in clip_logits
        )
    smooth = smoothing_loss(outputs["stage_logits"], mask.bool(), multilabel=multilabel)
    loss = cls + smoothing_weight * smooth
    parts = {"classification": cls.detach(), "smoothing": smooth.detach(), "loss": loss.detach()}
    return loss, parts
