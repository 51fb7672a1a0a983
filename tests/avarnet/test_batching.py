"""avarnet.batching: padding variable-length clips into one batch with a mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avarnet.batching import Batch, pad_batch


def _clip(t: int, da: int = 2, dv: int = 3, start: float = 1.0):
    """Audio/visual ``(t, D)`` whose step i holds ``start + i`` everywhere (to see windows)."""
    steps = start + np.arange(t, dtype=np.float32)[:, None]
    return np.repeat(steps, da, 1), np.repeat(steps, dv, 1) * 10


def test_pads_to_the_longest_clip_with_zeros_and_a_mask():
    (a1, v1), (a2, v2) = _clip(3), _clip(5)
    b = pad_batch([a1, a2], [v1, v2], [True, False])
    assert b.audio.shape == (2, 5, 2) and b.visual.shape == (2, 5, 3)
    assert b.audio.dtype == torch.float32 and b.visual.dtype == torch.float32
    assert b.lengths.tolist() == [3, 5] and b.lengths.dtype == torch.int64
    assert b.mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert b.has_audio.tolist() == [True, False] and b.has_audio.dtype == torch.bool
    np.testing.assert_array_equal(b.audio[0, :3].numpy(), a1)
    np.testing.assert_array_equal(b.visual[1].numpy(), v2)
    assert not b.audio[0, 3:].any() and not b.visual[0, 3:].any()


def test_long_clips_are_cut_to_the_first_window_without_rng():
    a, v = _clip(10)
    b = pad_batch([a], [v], [True], max_len=4)
    assert b.lengths.tolist() == [4]
    assert b.audio[0, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_array_equal(b.visual[0].numpy(), v[:4])


def test_long_clips_are_cut_to_a_random_window_with_rng():
    a, v = _clip(10)
    starts = set()
    for seed in range(20):
        b = pad_batch([a], [v], [True], max_len=4, rng=np.random.default_rng(seed))
        first = int(b.audio[0, 0, 0]) - 1
        assert b.audio[0, :, 0].tolist() == [first + 1.0 + i for i in range(4)]  # contiguous
        np.testing.assert_array_equal(b.visual[0].numpy(), v[first : first + 4])  # same window
        assert 0 <= first <= 6
        starts.add(first)
    assert len(starts) > 1
    # The same seed gives the same window.
    again = [pad_batch([a], [v], [True], max_len=4, rng=np.random.default_rng(3)) for _ in "ab"]
    assert torch.equal(again[0].audio, again[1].audio)


def test_short_clips_are_not_touched_by_max_len():
    (a1, v1), (a2, v2) = _clip(2), _clip(8)
    b = pad_batch([a1, a2], [v1, v2], [True, True], max_len=4, rng=np.random.default_rng(0))
    assert b.lengths.tolist() == [2, 4]
    np.testing.assert_array_equal(b.audio[0, :2].numpy(), a1)


def test_mismatched_lengths_are_refused():
    a, v = _clip(3)
    with pytest.raises(ValueError, match="audio has 2 steps but visual 3"):
        pad_batch([a[:2]], [v], [True])
    with pytest.raises(ValueError, match="one entry per clip"):
        pad_batch([a, a], [v], [True, True])
    with pytest.raises(ValueError, match="one entry per clip"):
        pad_batch([a], [v], [True, False])


def test_an_empty_batch_is_refused():
    with pytest.raises(ValueError, match="empty batch"):
        pad_batch([], [], [])


def test_has_audio_as_a_numpy_array():
    a, v = _clip(2)
    b = pad_batch([a, a], [v, v], np.array([0, 1]))
    assert b.has_audio.tolist() == [False, True]


def test_batch_to_moves_every_tensor_and_keeps_values():
    a, v = _clip(3)
    b = pad_batch([a], [v], [True])
    moved = b.to("cpu")
    assert isinstance(moved, Batch) and moved is not b
    for name in ("audio", "visual", "mask", "has_audio", "lengths"):
        assert torch.equal(getattr(moved, name), getattr(b, name))
        assert getattr(moved, name).device.type == "cpu"
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        assert b.to("cuda").audio.device.type == "cuda"
