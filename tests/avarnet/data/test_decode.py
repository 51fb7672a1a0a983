"""Decoding real video files (written here with PyAV) onto the segment grid, with each
frame decoder (decord and the PyAV fallback) forced in turn."""

from __future__ import annotations

import numpy as np
import pytest

from avarnet.data.decode import DecodeError, DecodeOptions, decode_clip, iter_chunks, probe
from avarnet.data.synthetic import write_av_clip

SR = 16000


def _gray_video(n: int, h: int = 48, w: int = 64, step: int = 4) -> np.ndarray:
    """Frame i is uniformly grey at level ``i * step`` so a decoded frame names its index."""
    levels = (np.arange(n) * step) % 256
    return np.broadcast_to(levels[:, None, None, None], (n, h, w, 3)).astype(np.uint8).copy()


def _tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    sig = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(sig[None, :], channels, axis=0)


def _frame_index(frames: np.ndarray, path, size: int = 32) -> np.ndarray:
    """Which source frame each sampled frame is: the nearest grey level among all frames.

    The reference levels come from decoding every frame of ``path`` at the same size, so
    colour-range rounding in the codec (a level of 4 may come back as 2 or 3) cancels out.
    """
    import decord

    vr = decord.VideoReader(str(path), width=size, height=size)
    ref = vr.get_batch(list(range(len(vr)))).asnumpy()[..., 0].mean(axis=(1, 2))
    got = frames[..., 0].mean(axis=(-1, -2))
    return np.abs(got[..., None] - ref).argmin(axis=-1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("decode")
    paths = {}
    paths["av"] = d / "av.mp4"
    write_av_clip(paths["av"], _gray_video(48), 12, _tone(4.0, SR), SR)
    paths["noaudio"] = d / "noaudio.mp4"
    write_av_clip(paths["noaudio"], _gray_video(36), 12, None, None)
    paths["stereo48k"] = d / "stereo48k.mp4"
    write_av_clip(paths["stereo48k"], _gray_video(50), 25, _tone(2.0, 48000, 1000.0, 2), 48000)
    paths["short"] = d / "short.mp4"
    write_av_clip(paths["short"], _gray_video(5), 12, _tone(5 / 12, SR), SR)
    # Variable frame rate: 20 frames whose display times are irregular.
    vfr_pts = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 19, 24, 29, 34, 35, 36, 37, 38, 39])
    paths["vfr"] = d / "vfr.mp4"
    write_av_clip(paths["vfr"], _gray_video(20), 10, None, None, pts=vfr_pts)
    paths["mismatch"] = d / "mismatch.mp4"
    write_av_clip(paths["mismatch"], _gray_video(48), 12, _tone(1.0, SR), SR)
    paths["long"] = d / "long.mp4"
    write_av_clip(paths["long"], _gray_video(600, 32, 32, step=1), 10, _tone(60.0, SR), SR)
    return paths


@pytest.fixture(params=["decord", "pyav"])
def decoder(request) -> str:
    return request.param


def test_probe_reports_metadata(clips, decoder):
    info = probe(clips["av"], decoder)
    assert info.decoder == decoder
    assert info.n_frames == 48
    assert info.fps == pytest.approx(12, rel=1e-3)
    assert info.duration_s == pytest.approx(4.0, abs=0.01)
    assert (info.width, info.height) == (64, 48)
    assert info.has_audio and info.audio_sample_rate == SR and info.audio_channels == 1


def test_clip_with_audio_is_cut_on_the_segment_grid(clips, decoder):
    opts = DecodeOptions(segment_seconds=1.0, frames_per_segment=4, image_size=32, decoder=decoder)
    chunk = decode_clip(clips["av"], opts)
    assert chunk.frames.shape == (4, 4, 32, 32, 3) and chunk.frames.dtype == np.uint8
    np.testing.assert_allclose(chunk.bounds_s, [0, 1, 2, 3, 4])
    assert chunk.audio.shape == (4 * SR,) and chunk.audio.dtype == np.float32
    assert chunk.has_audio
    # Frames sampled at (k + 0.5) / 4 s into each 1 s segment at 12 fps: indices 1, 4, 7, 10 (+12 t).
    expected = np.array([[1, 4, 7, 10]]) + 12 * np.arange(4)[:, None]
    np.testing.assert_array_equal(_frame_index(chunk.frames, clips["av"]), expected)
    # The tone is in the audio, on every segment.
    seg = chunk.audio.reshape(4, SR)
    assert np.all(np.sqrt((seg[:, 2000:] ** 2).mean(axis=1)) > 0.1)


def test_clip_without_audio_gets_zeros_and_flag(clips, decoder):
    opts = DecodeOptions(frames_per_segment=2, image_size=32, decoder=decoder)
    chunk = decode_clip(clips["noaudio"], opts)
    assert not chunk.has_audio and not chunk.info.has_audio
    assert chunk.frames.shape[0] == 3
    assert chunk.audio.shape == (3 * SR,) and not chunk.audio.any()


def test_48k_stereo_is_resampled_to_16k_mono(clips, decoder):
    info = probe(clips["stereo48k"], decoder)
    assert info.audio_sample_rate == 48000 and info.audio_channels == 2
    chunk = decode_clip(
        clips["stereo48k"], DecodeOptions(frames_per_segment=2, image_size=32, decoder=decoder)
    )
    assert chunk.audio.shape == (2 * SR,)
    spectrum = np.abs(np.fft.rfft(chunk.audio[4000:20000]))
    peak_hz = np.argmax(spectrum) * SR / 16000
    assert peak_hz == pytest.approx(1000, abs=5)


def test_variable_frame_rate_samples_by_time(clips, decoder):
    info = probe(clips["vfr"], decoder)
    assert info.n_frames == 20
    assert info.duration_s == pytest.approx(4.0, abs=0.01)
    chunk = decode_clip(
        clips["vfr"], DecodeOptions(frames_per_segment=2, image_size=32, decoder=decoder)
    )
    # Frame i is shown from pts[i] / 10 s. Segment 1 spans 1..2 s: at 1.25 s frame 9 (from
    # 0.9 s) is on screen, at 1.75 s frame 10 (from 1.4 s).
    np.testing.assert_array_equal(_frame_index(chunk.frames, clips["vfr"])[1], [9, 10])
    # Segment 3 spans 3..4 s: at 3.25 s frame 13 (from 2.9 s), at 3.75 s frame 17 (from 3.7 s).
    np.testing.assert_array_equal(_frame_index(chunk.frames, clips["vfr"])[3], [13, 17])


def test_clip_shorter_than_one_segment_gives_one_padded_segment(clips, decoder):
    chunk = decode_clip(
        clips["short"], DecodeOptions(frames_per_segment=4, image_size=32, decoder=decoder)
    )
    assert chunk.frames.shape[0] == 1 and chunk.n_segments_total == 1
    assert chunk.audio.shape == (SR,)
    # The audio after the clip's end (5/12 s) is zero padding.
    assert not chunk.audio[int(0.6 * SR) :].any()
    assert _frame_index(chunk.frames, clips["short"]).max() == 4


def test_segment_frames_mode_follows_frame_indices(clips, decoder):
    opts = DecodeOptions(segment_frames=16, frames_per_segment=4, image_size=32, decoder=decoder)
    chunk = decode_clip(clips["av"], opts)
    assert chunk.frames.shape[0] == 3  # 48 frames // 16
    np.testing.assert_allclose(chunk.bounds_s, np.array([0, 16, 32, 48]) / 12, atol=1e-6)
    np.testing.assert_array_equal(_frame_index(chunk.frames, clips["av"])[0], [2, 6, 10, 14])


def test_audio_video_length_mismatch_is_an_error(clips, decoder):
    with pytest.raises(DecodeError, match="more than one segment"):
        decode_clip(
            clips["mismatch"], DecodeOptions(frames_per_segment=2, image_size=32, decoder=decoder)
        )


def test_long_clip_is_decoded_in_bounded_chunks(clips, decoder):
    opts = DecodeOptions(frames_per_segment=2, image_size=32, chunk_segments=8, decoder=decoder)
    chunks = list(iter_chunks(clips["long"], opts))
    assert len(chunks) == 8  # 60 segments / 8
    assert max(c.n_segments for c in chunks) == 8
    assert sum(c.n_segments for c in chunks) == 60
    assert [c.segment_start for c in chunks] == list(range(0, 60, 8))
    assert all(len(c.audio) == c.n_segments * SR for c in chunks)
    whole = decode_clip(clips["long"], opts)
    np.testing.assert_array_equal(whole.frames, np.concatenate([c.frames for c in chunks]))


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "missing", "directory"])
def test_bad_input_is_one_clear_error(clips, tmp_path, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n")
    elif kind == "truncated":
        data = clips["av"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(DecodeError) as info:
        decode_clip(path, DecodeOptions(image_size=32))
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fail_from", [0, 2])
def test_pyav_takes_over_where_decord_fails(clips, monkeypatch, fail_from):
    """decord failing on chunk ``fail_from``: PyAV reads that chunk and the rest, on the
    same grid and with the same frames decord would have given."""
    from avarnet.data import decode

    opts = DecodeOptions(frames_per_segment=2, image_size=32, chunk_segments=8)
    info = probe(clips["long"])
    assert info.decoder == "decord"
    expected = list(iter_chunks(clips["long"], opts, info))
    open_video = decode._open_video

    def failing_open_video(*args, **kwargs):
        vr, calls = open_video(*args, **kwargs), []

        class Failing:
            def __getattr__(self, name):
                return getattr(vr, name)

            def __len__(self):
                return len(vr)

            def get_batch(self, indices):
                calls.append(1)
                if len(calls) > fail_from:
                    raise RuntimeError("Check failed: a decord internal")
                return vr.get_batch(indices)

        return Failing()

    monkeypatch.setattr(decode, "_open_video", failing_open_video)
    chunks = list(iter_chunks(clips["long"], opts, info))
    assert [c.decoder for c in chunks] == ["decord"] * fail_from + ["pyav"] * (8 - fail_from)
    assert [c.segment_start for c in chunks] == [c.segment_start for c in expected]
    for got, want in zip(chunks, expected):
        np.testing.assert_array_equal(got.bounds_s, want.bounds_s)
        np.testing.assert_array_equal(got.frames, want.frames)
        np.testing.assert_array_equal(got.audio, want.audio)
    forced = DecodeOptions(frames_per_segment=2, image_size=32, chunk_segments=8, decoder="decord")
    with pytest.raises(DecodeError, match="decord cannot read it") as err:
        list(iter_chunks(clips["long"], forced, info))
    assert "Check failed" not in err.value.reason
