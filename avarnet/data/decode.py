"""Decode a video file into time-aligned frames and audio on a segment grid.

This is the only module that talks to the decoders (decord for frames, PyAV for audio).
A clip is cut into
``T`` consecutive segments; segment ``t`` spans ``[bounds_s[t], bounds_s[t + 1])`` seconds:

- ``segment_seconds`` mode (VAAR style, default 1 s): ``T = max(1, round_half_up(duration /
  segment_seconds))``. The last segment may run past the end of the video (its frames repeat
  the last frame, its audio is zero-padded) or drop a tail shorter than half a segment.
- ``segment_frames=N`` mode (XD-Violence, N=16): ``T = max(1, n_frames // N)``; segment ``t``
  holds frames ``[N t, N t + N)`` and its bounds are those frames' timestamps.

Inside each segment ``K = frames_per_segment`` frames are sampled uniformly in time (the
frame on screen at ``bounds[t] + (k + 0.5) / K * (bounds[t + 1] - bounds[t])``), which also
handles variable frame rates and segments shorter than K frames. Frames are resized
(squashed) to ``image_size x image_size`` RGB ``uint8``. Audio is resampled to
``sample_rate`` mono ``float32`` and cut on the same grid; a clip without an audio track
gets zeros and ``has_audio=False``. An audio track whose length differs from the video's
by more than one segment is an error, never a silent slice.

Long clips are decoded ``chunk_segments`` segments at a time (:func:`iter_chunks`), so peak
memory holds a few segments' frames, never the whole clip's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ClipChunk",
    "ClipInfo",
    "DecodeError",
    "DecodeOptions",
    "chunk_bounds",
    "decode_clip",
    "iter_chunks",
    "probe",
    "segment_bounds",
    "segment_frame_bounds",
]


class DecodeError(Exception):
    """A clip that cannot be decoded. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class DecodeOptions:
    """How a clip becomes a segment grid. See the module docstring for the exact rules."""

    segment_seconds: float = 1.0
    segment_frames: int | None = None
    frames_per_segment: int = 8
    image_size: int = 256
    sample_rate: int = 16000
    chunk_segments: int = 32
    threads: int = 1

    def __post_init__(self) -> None:
        if self.segment_frames is None and not self.segment_seconds > 0:
            raise ValueError(f"segment_seconds must be > 0, got {self.segment_seconds}")
        if self.segment_frames is not None and self.segment_frames < 1:
            raise ValueError(f"segment_frames must be >= 1, got {self.segment_frames}")
        for name in ("frames_per_segment", "image_size", "sample_rate", "chunk_segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 32:
            # decord's scaler pads rows below 32 px and returns a mis-sized buffer.
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")


@dataclass(frozen=True)
class ClipInfo:
    """Container metadata of one clip (no pixels decoded)."""

    path: str
    fps: float
    n_frames: int
    duration_s: float
    width: int
    height: int
    has_audio: bool
    audio_sample_rate: int | None
    audio_channels: int | None

    def n_segments(self, opts: DecodeOptions) -> int:
        """Number of segments ``T`` of this clip under ``opts``."""
        if opts.segment_frames is not None:
            return max(1, self.n_frames // opts.segment_frames)
        return max(1, math.floor(self.duration_s / opts.segment_seconds + 0.5))


@dataclass
class ClipChunk:
    """Consecutive segments of one clip, decoded.

    Attributes:
        frames: ``(n, K, H, W, 3)`` uint8 RGB, ``n`` segments of ``K`` frames.
        audio: ``(S,)`` float32 mono at the options' sample rate, covering
            ``[bounds_s[0], bounds_s[-1])``; zeros when ``has_audio`` is false.
        bounds_s: ``(n + 1,)`` float64 absolute segment boundaries in seconds.
        segment_start: index of this chunk's first segment within the clip.
        n_segments_total: ``T`` for the whole clip.
    """

    info: ClipInfo
    chunk_index: int
    n_chunks: int
    segment_start: int
    n_segments_total: int
    bounds_s: np.ndarray
    frames: np.ndarray
    audio: np.ndarray
    has_audio: bool

    @property
    def n_segments(self) -> int:
        return int(self.frames.shape[0])


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DecodeError(path, "no such file")
    if os.path.isdir(path):
        raise DecodeError(path, "is a directory, expected a video file")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "empty file (0 bytes)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    # decord puts the useful part ("Invalid data found ...") on its last line.
    return (text[-1] if text else type(err).__name__)[:200]


def probe(path: str | os.PathLike) -> ClipInfo:
    """Read a clip's metadata (frame count, fps, duration, audio track) without decoding pixels.

    Raises:
        DecodeError: missing path, directory, empty file, or not a decodable video.
    """
    import av

    path = os.path.abspath(os.fspath(path))
    _check_file(path)
    try:
        with av.open(path) as container:
            vstreams = container.streams.video
            if not vstreams:
                raise DecodeError(path, "no video stream")
            vs = vstreams[0]
            width, height = int(vs.codec_context.width), int(vs.codec_context.height)
            astreams = container.streams.audio
            has_audio = bool(astreams)
            a_rate = int(astreams[0].codec_context.sample_rate) if has_audio else None
            a_channels = int(astreams[0].codec_context.channels) if has_audio else None
    except DecodeError:
        raise
    except Exception as err:  # PyAV raises several error types for corrupt input
        raise DecodeError(path, f"not a readable video ({_first_line(err)})") from None
    vr = _open_video(path)
    try:
        n_frames = len(vr)
        if n_frames == 0:
            raise DecodeError(path, "no video frames")
        last = vr.get_frame_timestamp(n_frames - 1)
        duration = float(np.asarray(last).reshape(-1)[1])
        if not duration > 0:
            duration = n_frames / max(vr.get_avg_fps(), 1e-6)
        fps = n_frames / duration
    finally:
        del vr
    return ClipInfo(
        path=path,
        fps=float(fps),
        n_frames=int(n_frames),
        duration_s=duration,
        width=width,
        height=height,
        has_audio=has_audio,
        audio_sample_rate=a_rate,
        audio_channels=a_channels,
    )


def _open_video(path: str, size: int | None = None, threads: int = 1):
    import decord

    kwargs = {"num_threads": threads}
    if size is not None:
        kwargs.update(width=size, height=size)
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), **kwargs)
    except Exception as err:
        raise DecodeError(path, f"not a decodable video ({_first_line(err)})") from None


def _frame_starts(vr) -> np.ndarray:
    n = len(vr)
    ts = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
    return ts[:, 0]


def segment_frame_bounds(info: ClipInfo, opts: DecodeOptions) -> np.ndarray | None:
    """``(T + 1,)`` frame-index boundaries in ``segment_frames`` mode, else ``None``."""
    if opts.segment_frames is None:
        return None
    t = info.n_segments(opts)
    return np.minimum(np.arange(t + 1) * opts.segment_frames, info.n_frames)


def segment_bounds(
    info: ClipInfo, opts: DecodeOptions, frame_starts: np.ndarray | None = None
) -> np.ndarray:
    """``(T + 1,)`` float64 segment boundaries in seconds (see module docstring)."""
    t = info.n_segments(opts)
    if opts.segment_frames is None:
        return np.arange(t + 1, dtype=np.float64) * opts.segment_seconds
    fb = segment_frame_bounds(info, opts)
    if frame_starts is None:
        frame_starts = np.arange(info.n_frames, dtype=np.float64) / info.fps
    times = np.append(frame_starts, info.duration_s)
    return times[fb].astype(np.float64)


def _sample_indices(bounds: np.ndarray, frame_starts: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` frame indices: the frame on screen at k evenly spaced times per segment."""
    lo, hi = bounds[:-1, None], bounds[1:, None]
    times = lo + (np.arange(k)[None, :] + 0.5) / k * (hi - lo)
    idx = np.searchsorted(frame_starts, times, side="right") - 1
    return np.clip(idx, 0, len(frame_starts) - 1)


def _decode_audio_stream(path: str, sample_rate: int) -> np.ndarray:
    """The first audio stream as mono float32 at ``sample_rate``, decoded and resampled
    frame by frame (FFmpeg's resampler through PyAV): memory is the output (3.8 MB per
    minute at 16 kHz) plus one frame, whatever the source rate, channels or length.
    (decord's AudioReader holds the whole track at intermediate precision: ~1 GB for a
    10-minute clip.)"""
    import av

    parts: list[np.ndarray] = []
    with av.open(path) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            parts.append(out.to_ndarray().reshape(-1))
    if not parts:
        return np.zeros(0, np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def _load_audio(info: ClipInfo, opts: DecodeOptions, end_s: float) -> np.ndarray:
    """Whole audio track resampled to mono ``opts.sample_rate``, fitted to ``end_s`` seconds."""
    n_target = int(round(end_s * opts.sample_rate))
    if not info.has_audio:
        return np.zeros(n_target, dtype=np.float32)
    try:
        audio = _decode_audio_stream(info.path, opts.sample_rate)
    except Exception as err:
        raise DecodeError(
            info.path, f"audio track cannot be decoded ({_first_line(err)})"
        ) from None
    audio_s = len(audio) / opts.sample_rate
    # Tolerance: one segment of the grid, and never less than the video duration's own
    # rounding (a clip shorter than one segment still carries its short audio).
    step = end_s / max(info.n_segments(opts), 1)
    if abs(audio_s - info.duration_s) > step:
        raise DecodeError(
            info.path,
            f"audio lasts {audio_s:.2f}s but video {info.duration_s:.2f}s: "
            f"more than one segment ({step:.2f}s) apart",
        )
    if len(audio) >= n_target:
        return audio[:n_target]
    return np.pad(audio, (0, n_target - len(audio)))


def iter_chunks(
    path: str | os.PathLike, opts: DecodeOptions | None = None, info: ClipInfo | None = None
) -> Iterator[ClipChunk]:
    """Decode a clip ``opts.chunk_segments`` segments at a time.

    ``info``: this path's :func:`probe` result, when the caller has it already.

    Memory: one chunk's frames ``(chunk_segments, K, S, S, 3)`` plus the clip's audio at
    ``opts.sample_rate`` (16 kHz mono float32 is 3.8 MB per minute).

    Raises:
        DecodeError: the file is missing, empty, not a video, truncated, or its audio and
            video lengths disagree by more than one segment.
    """
    opts = opts or DecodeOptions()
    info = info or probe(path)
    vr = _open_video(info.path, opts.image_size, opts.threads)
    try:
        starts = _frame_starts(vr)
        bounds = segment_bounds(info, opts, starts)
        n_total = len(bounds) - 1
        if opts.segment_frames is not None:
            fb = segment_frame_bounds(info, opts)
            k = opts.frames_per_segment
            offs = np.floor((np.arange(k) + 0.5) * opts.segment_frames / k).astype(np.int64)
            indices = np.minimum(fb[:-1, None] + offs[None, :], info.n_frames - 1)
        else:
            indices = _sample_indices(bounds, starts, opts.frames_per_segment)
        audio = _load_audio(info, opts, float(bounds[-1]))
        sr = opts.sample_rate
        n_chunks = math.ceil(n_total / opts.chunk_segments)
        for c in range(n_chunks):
            s0, s1 = c * opts.chunk_segments, min(n_total, (c + 1) * opts.chunk_segments)
            flat = indices[s0:s1].reshape(-1)
            try:
                frames = vr.get_batch(flat.tolist()).asnumpy()
            except Exception as err:
                raise DecodeError(
                    info.path,
                    f"frames {flat[0]}..{flat[-1]} cannot be decoded ({_first_line(err)})",
                ) from None
            frames = frames.reshape(s1 - s0, opts.frames_per_segment, *frames.shape[1:])
            a0, a1 = int(round(bounds[s0] * sr)), int(round(bounds[s1] * sr))
            yield ClipChunk(
                info=info,
                chunk_index=c,
                n_chunks=n_chunks,
                segment_start=s0,
                n_segments_total=n_total,
                bounds_s=bounds[s0 : s1 + 1].copy(),
                frames=np.ascontiguousarray(frames),
                audio=audio[a0:a1].copy(),
                has_audio=info.has_audio,
            )
    finally:
        del vr


def chunk_bounds(chunks: list[ClipChunk]) -> np.ndarray:
    """The segment boundaries ``(T + 1,)`` of consecutive chunks of one clip."""
    return np.concatenate([chunks[0].bounds_s] + [c.bounds_s[1:] for c in chunks[1:]])


def decode_clip(path: str | os.PathLike, opts: DecodeOptions | None = None) -> ClipChunk:
    """Decode a whole clip as one chunk (for short clips and tests; use :func:`iter_chunks`
    for long ones)."""
    chunks = list(iter_chunks(path, opts))
    first = chunks[0]
    if len(chunks) == 1:
        return first
    return ClipChunk(
        info=first.info,
        chunk_index=0,
        n_chunks=1,
        segment_start=0,
        n_segments_total=first.n_segments_total,
        bounds_s=chunk_bounds(chunks),
        frames=np.concatenate([c.frames for c in chunks]),
        audio=np.concatenate([c.audio for c in chunks]),
        has_audio=first.has_audio,
    )
