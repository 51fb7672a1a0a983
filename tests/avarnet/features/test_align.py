"""Backbone frames -> segments, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from avarnet.features.align import pool_at_times, pool_to_segments


def _frames(n: int, d: int = 2) -> np.ndarray:
    """Frame i holds (i, 10 i, ...) so a pooled value names the frames it averaged."""
    return np.arange(n, dtype=np.float32)[:, None] * (10.0 ** np.arange(d, dtype=np.float32))


def test_frames_are_averaged_by_centre_time():
    # 50 Hz frames over 2 s: centres 0.01, 0.03, ..., 1.99 -> 50 frames per 1 s segment.
    out = pool_to_segments(_frames(100), 50.0, 0.0, np.array([0.0, 1.0, 2.0]))
    assert out.shape == (2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [np.mean(np.arange(50)), np.mean(np.arange(50, 100))])
    np.testing.assert_allclose(out[:, 1], 10 * out[:, 0])


def test_offset_and_uneven_segments():
    # Frames start at 10 s; segments of 0.64 s (16 frames at 25 fps) hold 32 frames each.
    bounds = 10.0 + np.array([0.0, 0.64, 1.28])
    out = pool_to_segments(_frames(64), 50.0, 10.0, bounds)
    np.testing.assert_allclose(out[:, 0], [np.mean(np.arange(32)), np.mean(np.arange(32, 64))])


def test_short_clip_with_one_segment():
    # 0.3 s of audio gives 14 Wav2Vec2 frames; the single segment is their mean.
    out = pool_to_segments(_frames(14), 50.0, 0.0, np.array([0.0, 0.3]))
    np.testing.assert_allclose(out, [[6.5, 65.0]])
    # A single frame pools to itself.
    np.testing.assert_allclose(
        pool_to_segments(_frames(1), 50.0, 0.0, np.array([0.0, 0.02])), [[0, 0]]
    )


def test_segment_without_a_frame_takes_the_nearest():
    # [0.5, 0.505) holds no centre (0.49, 0.51 are outside); its midpoint 0.5025 is nearest 0.51.
    bounds = np.array([0.0, 0.5, 0.505, 1.0])
    out = pool_to_segments(_frames(50), 50.0, 0.0, bounds)
    np.testing.assert_allclose(
        out[:, 0], [np.mean(np.arange(25)), 25.0, np.mean(np.arange(25, 50))]
    )


def test_explicit_centres_with_a_gap():
    # Two windows whose frames are not evenly spaced across the join.
    centres = np.array([0.1, 0.3, 0.5, 1.2, 1.4])
    out = pool_at_times(_frames(5), centres, np.array([0.0, 1.0, 1.5]), 0.2)
    np.testing.assert_allclose(out[:, 0], [1.0, 3.5])


@pytest.mark.parametrize(
    ("n_frames", "offset", "bounds"),
    [
        (150, 0.0, [0.0, 1.0]),  # 3 s of audio for a 1 s grid
        (50, 0.0, [0.0, 1.0, 2.0, 3.0]),  # 1 s of audio for a 3 s grid
        (100, 0.0, [10.0, 11.0, 12.0]),  # right length, wrong clock
    ],
)
def test_length_mismatch_of_more_than_one_segment_is_an_error(n_frames, offset, bounds):
    with pytest.raises(ValueError, match="more than one segment"):
        pool_to_segments(_frames(n_frames), 50.0, offset, np.array(bounds))


def test_mismatch_within_one_segment_is_tolerated():
    # 1.5 s of audio on a 2 s grid: the last segment pools the frames it has.
    out = pool_to_segments(_frames(75), 50.0, 0.0, np.array([0.0, 1.0, 2.0]))
    np.testing.assert_allclose(out[:, 0], [np.mean(np.arange(50)), np.mean(np.arange(50, 75))])


def test_bad_inputs():
    with pytest.raises(ValueError, match="no frames"):
        pool_to_segments(np.zeros((0, 4)), 50.0, 0.0, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="n >= 1"):
        pool_to_segments(_frames(50), 50.0, 0.0, np.array([0.0]))
    with pytest.raises(ValueError, match="increasing"):
        pool_to_segments(_frames(50), 50.0, 0.0, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(L, D\)"):
        pool_to_segments(np.zeros(50), 50.0, 0.0, np.array([0.0, 1.0]))
