"""Padding variable-length clips into batches with masks.

Shared by training, evaluation and the predictor so every path pads the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Batch", "pad_batch"]


@dataclass
class Batch:
    """A padded batch. One step of T is one feature segment.

    Attributes:
        audio: ``(B, T, Da)`` float32, zero beyond each clip's length.
        visual: ``(B, T, Dv)`` float32.
        mask: ``(B, T)`` bool, True on valid steps.
        has_audio: ``(B,)`` bool.
        lengths: ``(B,)`` int64 valid steps per clip.
    """

    audio: torch.Tensor
    visual: torch.Tensor
    mask: torch.Tensor
    has_audio: torch.Tensor
    lengths: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(
                t.to(device)
                for t in (self.audio, self.visual, self.mask, self.has_audio, self.lengths)
            )
        )


def pad_batch(
    audio: list[np.ndarray],
    visual: list[np.ndarray],
    has_audio: list[bool] | np.ndarray,
    max_len: int | None = None,
    rng: np.random.Generator | None = None,
) -> Batch:
    """Pad clips ``(T_i, D)`` to ``(B, max T_i, D)`` with a mask.

    Clips longer than ``max_len`` are cut to a window of ``max_len`` steps: a random window
    when ``rng`` is given (training), else the first ``max_len`` steps.
    """
    if len(audio) != len(visual) or len(audio) != len(has_audio):
        raise ValueError("audio, visual and has_audio must have one entry per clip")
    if not audio:
        raise ValueError("empty batch")
    pairs = []
    for a, v in zip(audio, visual):
        if len(a) != len(v):
            raise ValueError(f"audio has {len(a)} steps but visual {len(v)}")
        t = len(v)
        if max_len is not None and t > max_len:
            start = int(rng.integers(0, t - max_len + 1)) if rng is not None else 0
            a, v = a[start : start + max_len], v[start : start + max_len]
        pairs.append((a, v))
    lengths = np.array([len(v) for _, v in pairs], dtype=np.int64)
    b, t = len(pairs), int(lengths.max())
    da, dv = pairs[0][0].shape[1], pairs[0][1].shape[1]
    a_out = np.zeros((b, t, da), np.float32)
    v_out = np.zeros((b, t, dv), np.float32)
    for i, (a, v) in enumerate(pairs):
        a_out[i, : len(a)] = a
        v_out[i, : len(v)] = v
    mask = np.arange(t)[None, :] < lengths[:, None]
    return Batch(
        audio=torch.from_numpy(a_out),
        visual=torch.from_numpy(v_out),
        mask=torch.from_numpy(mask),
        has_audio=torch.as_tensor(np.asarray(has_audio, dtype=bool)),
        lengths=torch.from_numpy(lengths),
    )
