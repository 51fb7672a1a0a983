"""Map backbone output frames onto the clip's segment grid.

Wav2Vec2 emits one vector per hop (320 samples = 20 ms at 16 kHz). Each output frame is
placed at the centre of the audio it summarises; a segment ``[b_t, b_{t+1})`` is the mean of
the frames whose centre falls inside it. A segment too short to hold a frame centre (a few
milliseconds) takes the frame nearest to its midpoint. If the frames and the grid disagree
in length by more than one segment the inputs are inconsistent and this is an error,
never a silent slice.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pool_at_times", "pool_to_segments"]


def pool_at_times(
    hidden: np.ndarray, centres_s: np.ndarray, bounds_s: np.ndarray, frame_period_s: float
) -> np.ndarray:
    """Mean-pool frames given their centre times into segments.

    Args:
        hidden: ``(L, D)`` frame vectors.
        centres_s: ``(L,)`` increasing centre time of each frame, in seconds.
        bounds_s: ``(n + 1,)`` increasing segment boundaries in seconds.
        frame_period_s: duration one frame covers (seconds); the frames span
            ``[centres_s[0] - period / 2, centres_s[-1] + period / 2]``.

    Returns:
        ``(n, D)`` float32: segment ``t`` is the mean of the frames with centre in
        ``[bounds_s[t], bounds_s[t + 1])``, or the frame nearest to its midpoint if none.

    Raises:
        ValueError: no frames, no segments, shapes that disagree, or frames whose span
            differs from the grid's by more than one segment at either end.
    """
    hidden = np.asarray(hidden)
    centres = np.asarray(centres_s, dtype=np.float64)
    bounds = np.asarray(bounds_s, dtype=np.float64)
    if hidden.ndim != 2:
        raise ValueError(f"hidden must be (L, D), got shape {hidden.shape}")
    if centres.shape != (hidden.shape[0],):
        raise ValueError(f"centres_s must be ({hidden.shape[0]},), got shape {centres.shape}")
    if bounds.ndim != 1 or len(bounds) < 2:
        raise ValueError(f"bounds_s must be (n + 1,) with n >= 1, got shape {bounds.shape}")
    if np.any(np.diff(bounds) <= 0):
        raise ValueError("bounds_s must be strictly increasing")
    if len(centres) == 0:
        raise ValueError("no frames to pool (empty hidden states)")
    step = float(np.max(np.diff(bounds)))
    span = (centres[0] - frame_period_s / 2, centres[-1] + frame_period_s / 2)
    if abs(span[0] - bounds[0]) > step or abs(span[1] - bounds[-1]) > step:
        raise ValueError(
            f"frames cover {span[0]:.3f}..{span[1]:.3f}s but the segment grid "
            f"{bounds[0]:.3f}..{bounds[-1]:.3f}s: more than one segment ({step:.3f}s) apart"
        )
    # Frames are sorted by time and segments are contiguous: segment t holds the frames
    # first[t]:first[t + 1], and a prefix sum gives every segment's sum at once.
    first = np.searchsorted(centres, bounds, side="left")
    csum = np.concatenate([np.zeros((1, hidden.shape[1])), np.cumsum(hidden, 0, dtype=np.float64)])
    counts = np.diff(first)
    sums = csum[first[1:]] - csum[first[:-1]]
    out = sums / np.maximum(counts, 1)[:, None]
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        mids = (bounds[empty] + bounds[empty + 1]) / 2
        nearest = np.zeros(len(empty), dtype=np.int64)
        if len(centres) > 1:
            right = np.clip(np.searchsorted(centres, mids), 1, len(centres) - 1)
            left = right - 1
            nearest = np.where(mids - centres[left] <= centres[right] - mids, left, right)
        out[empty] = hidden[nearest]
    return out.astype(np.float32)


def pool_to_segments(
    hidden: np.ndarray, frame_rate_hz: float, offset_s: float, bounds_s: np.ndarray
) -> np.ndarray:
    """Mean-pool evenly spaced frames into segments.

    Args:
        hidden: ``(L, D)`` frame vectors; frame ``i`` is centred at
            ``offset_s + (i + 0.5) / frame_rate_hz`` seconds.
        frame_rate_hz: frames per second (Wav2Vec2 at 16 kHz: 50).
        offset_s: time of the start of frame 0, in seconds.
        bounds_s: ``(n + 1,)`` segment boundaries in seconds (same clock as ``offset_s``).

    Returns:
        ``(n, D)`` float32, as :func:`pool_at_times`.

    Raises:
        ValueError: as :func:`pool_at_times` (notably a length mismatch of more than one
            segment between the frames and the grid).
    """
    if not frame_rate_hz > 0:
        raise ValueError(f"frame_rate_hz must be > 0, got {frame_rate_hz}")
    n_frames = np.asarray(hidden).shape[0]
    centres = offset_s + (np.arange(n_frames) + 0.5) / frame_rate_hz
    return pool_at_times(hidden, centres, bounds_s, 1.0 / frame_rate_hz)
