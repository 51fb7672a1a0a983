"""Decode a video file into time-aligned frames and audio on a segment grid.

This is the only module that talks to the decoders: decord or PyAV (FFmpeg) for frames,
PyAV for audio. A clip is cut into ``T`` consecutive segments; segment ``t`` spans
``[bounds_s[t], bounds_s[t + 1])`` seconds:

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

**Two frame decoders.** decord reads MP4, Matroska/WebM with an index, Ogg and AVI
with fast random access. It refuses containers that record no per-stream frame count or
duration (WebM/Matroska or ASF written to a pipe, Ogg/Theora without audio), codecs its
bundled FFmpeg 4.1 lacks (AV1), H.264 in MPEG-TS, and returns mis-sized frames at some
sizes; worse, in ASF and MPEG program/transport streams its seeks land on wrong frames
without an error (25 to 40 of 40 randomly sampled frames of 20 s test clips), and an AVI
written to a pipe (whose header claims 2^30 frames) aborts the process. So, per clip,
:func:`probe` uses PyAV for ASF, MPEG-PS and MPEG-TS and whenever decord fails to index
the file or decode frame 0 (at 32x32); if decord fails later, inside :func:`iter_chunks`,
PyAV takes over from the failing chunk on, on the same grid. ``ClipInfo.decoder`` (and
``ClipChunk.decoder``, per chunk) records which decoder read the frames, ``"decord"`` or
``"pyav"``; ``DecodeOptions(decoder="decord" | "pyav")`` forces one, without fallback.

Both decoders see the same timeline and give the same pixels:

- *timeline*: frame ``i`` starts at the ``i``-th smallest video packet timestamp minus the
  stream's start time (decord's own index; PyAV builds it with one demux pass, which reads
  the file but decodes nothing: 13 ms for a 60 s 640x360 H.264 clip), so a missing
  duration or frame count is measured rather than trusted. The clip lasts until the end of
  the last frame (its packet's duration, or the median frame interval when the packet has
  none). Times are rounded to float32 as decord stores them, so both decoders pick the same
  frame indices. An MP4/MOV holding fewer frames than its sample table lists is truncated.
- *sampling*: PyAV decodes the video once, in order (no seeking), and keeps the frame on
  screen at each sample time, holding one decoded frame and the current chunk's output.
  On a 60 s 640x360 H.264 clip at 256 px this took about as long as decord's random
  access (1.7 to 2.9 s against 1.9 to 2.8 s, K = 2 or 8, audio included, on a busy
  2-core machine); the PyAV path also demuxes the file once more in :func:`iter_chunks`.
- *resize*: PyAV runs the filter chain decord builds, ``[transpose,]scale=S:S`` with
  bilinear scaling to ``rgb24`` (decord's FFmpeg default), through FFmpeg's filter graph,
  honouring the display rotation as decord does: identical pixels when both dimensions
  are scaled; a source height equal to ``S`` rounds chroma differently (mean absolute
  difference 1 to 4 levels of 255).

A file that cannot be decoded raises :class:`DecodeError` whose ``reason`` is one line in
the user's terms ("empty file", "no video stream (audio only)", "not a video file (looks
like text/plain)", "the MP4/MOV container is damaged or truncated", ...), never a decoder's
internals.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "DECODERS",
    "DEFAULT_CHUNK_SEGMENTS",
    "ClipChunk",
    "ClipHeader",
    "ClipInfo",
    "DecodeError",
    "DecodeOptions",
    "chunk_bounds",
    "decode_clip",
    "iter_chunks",
    "probe",
    "read_header",
    "segment_bounds",
    "segment_frame_bounds",
]

DECODERS = ("auto", "decord", "pyav")
"""Values of ``DecodeOptions.decoder``: ``"auto"`` is decord with a per-clip PyAV fallback."""

DEFAULT_CHUNK_SEGMENTS = 32
"""Segments decoded (and encoded) together by default. It is also the audio context of the
features, so it is recorded in every FeatureSpec (:mod:`avarnet.features.spec`)."""


class DecodeError(Exception):
    """A clip that cannot be decoded. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class DecodeOptions:
    """How a clip becomes a segment grid. See the module docstring for the exact rules.

    ``decoder``: ``"auto"`` (decord, falling back to PyAV per clip), ``"decord"`` or
    ``"pyav"`` (that decoder only, no fallback).
    """

    segment_seconds: float = 1.0
    segment_frames: int | None = None
    frames_per_segment: int = 8
    image_size: int = 256
    sample_rate: int = 16000
    chunk_segments: int = DEFAULT_CHUNK_SEGMENTS
    threads: int = 1
    decoder: str = "auto"

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
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")


@dataclass(frozen=True)
class ClipInfo:
    """Container metadata of one clip (no pixels decoded).

    ``decoder``: which decoder reads this clip's frames, ``"decord"`` or ``"pyav"``.
    """

    path: str
    fps: float
    n_frames: int
    duration_s: float
    width: int
    height: int
    has_audio: bool
    audio_sample_rate: int | None
    audio_channels: int | None
    decoder: str = "decord"

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

    @property
    def decoder(self) -> str:
        """The decoder that produced this chunk's frames (``""`` when ``info`` is unset)."""
        return self.info.decoder if self.info is not None else ""


# -- user-facing reasons ----------------------------------------------------------------

# (offset, magic bytes, container) of the formats a damaged video file most likely is.
_CONTAINERS = (
    (4, b"ftyp", "MP4/MOV"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (0, b"OggS", "Ogg"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "ASF/WMV"),
    (0, b"\x00\x00\x01\xba", "MPEG program stream"),
    (0, b"FLV", "FLV"),
)
# Common files that are not video at all (FFmpeg would misread some of them).
_NOT_VIDEO = (
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"\x1f\x8b", "gzip data"),
    (0, b"\x7fELF", "a program"),
)


def _sniff(path: str) -> tuple[str, str] | None:
    """``("text", mime)``, ``("other", what)`` or ``("container", name)`` from the first
    bytes, or ``None`` when they say nothing."""
    with open(path, "rb") as f:
        head = f.read(4096)
    for off, magic, what in _NOT_VIDEO:
        if head[off : off + len(magic)] == magic:
            return "other", what
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "container", "AVI"
    if len(head) > 188 and head[0] == head[188] == 0x47:
        return "container", "MPEG transport stream"
    for off, magic, name in _CONTAINERS:
        if head[off : off + len(magic)] == magic:
            return "container", name
    if b"\x00" not in head:
        text = head.decode("utf-8", errors="replace")
        if text.count("\ufffd") <= 1:  # a multi-byte character cut at 4096 bytes
            start = text.lstrip("\ufeff \t\r\n").lower()
            if start.startswith(("<!doctype html", "<html")):
                return "text", "text/html"
            if start.startswith("<"):
                return "text", "text/xml"
            if start.startswith(("{", "[")):
                return "text", "application/json"
            return "text", "text/plain"
    return None


def _unreadable_reason(path: str) -> str:
    """Why FFmpeg cannot open ``path`` as a container, in the user's terms."""
    sniffed = _sniff(path)
    if sniffed is None:
        return "not a video file (unrecognised format)"
    kind, what = sniffed
    if kind == "text":
        return f"not a video file (looks like {what})"
    if kind == "other":
        return f"not a video file (looks like {what})"
    return f"the {what} container is damaged or truncated"


def _ffmpeg_reason(err: BaseException) -> str:
    """A PyAV/FFmpeg error as a short phrase: FFmpeg's own message, without its errno, the
    file name or any decoder internals."""
    import av

    if isinstance(err, av.error.DecoderNotFoundError):
        return "no decoder for this codec in this build"
    if isinstance(err, av.error.InvalidDataError):
        return "damaged data"
    if isinstance(err, (av.error.EOFError, EOFError)):
        return "the file ends unexpectedly"
    if isinstance(err, (av.error.PermissionError, PermissionError)):
        return "permission denied"
    if isinstance(err, MemoryError):
        return "out of memory"
    if isinstance(err, av.error.FFmpegError) and err.strerror:
        return str(err.strerror).strip().splitlines()[0][:120].lower()
    return f"unexpected decoder error ({type(err).__name__})"


# decord's messages carry its source paths and assertion text: map the known ones.
_DECORD_REASONS = (
    ("broken metadata", "the container records no duration or frame count"),
    ("cannot find video stream", "its codec is not supported by decord"),
    ("Unable to handle EOF", "decord cannot decode its frames"),
    ("must exactly match", "decord returns mis-sized frames at this size"),
)


def _decord_reason(err: BaseException) -> str:
    text = str(err)
    for needle, reason in _DECORD_REASONS:
        if needle in text:
            return f"decord cannot read it: {reason}"
    return "decord cannot read it"


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DecodeError(path, "no such file")
    if os.path.isdir(path):
        raise DecodeError(path, "is a directory, expected a video file")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise DecodeError(path, "permission denied")


# -- container metadata (PyAV) -------------------------------------------------------------


def _open_av(path: str):
    """``av.open(path)``, its failure as a :class:`DecodeError` in the user's terms."""
    import av

    try:
        return av.open(path)
    except av.error.FFmpegError as err:
        if isinstance(err, (av.error.InvalidDataError, av.error.EOFError)):
            raise DecodeError(path, _unreadable_reason(path)) from None
        raise DecodeError(path, f"cannot open the file ({_ffmpeg_reason(err)})") from None


# Containers in which decord's seeks land on the wrong frame: on 20 s test clips, 25 to 40
# of 40 frames sampled at random came back wrong from ASF, MPEG program and transport
# streams (none from MP4, Matroska/WebM, Ogg or AVI). PyAV reads these sequentially.
_DECORD_MISSEEKS = {"asf": "ASF/WMV", "mpeg": "MPEG program stream", "mpegts": "MPEG-TS"}


@dataclass(frozen=True)
class _Streams:
    container: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str
    width: int
    height: int
    claimed_frames: int  # the header's frame count, or rate x duration (0: unknown)
    duration_s: float | None  # the header's duration (None: it records none)
    has_audio: bool
    audio_sample_rate: int | None
    audio_channels: int | None


def _read_streams(path: str) -> _Streams:
    """The first video and audio streams' parameters, from the container header."""
    sniffed = _sniff(path)
    if sniffed is not None and sniffed[0] in ("text", "other"):
        # Before FFmpeg sees it: its tty demuxer renders a .txt file as a video of text,
        # and a playlist would send it after other files.
        raise DecodeError(path, _unreadable_reason(path))
    with _open_av(path) as container:
        fmt = str(container.format.name)
        if fmt.endswith("_pipe") or fmt in ("image2", "apng"):  # FFmpeg's image demuxers
            kind = fmt.removesuffix("_pipe").upper()
            raise DecodeError(path, f"a still image ({kind}), not a video")
        if not container.streams.video:
            audio_only = " (audio only)" if container.streams.audio else ""
            raise DecodeError(path, f"no video stream{audio_only}")
        vs = container.streams.video[0]
        cc = vs.codec_context
        if cc is None:
            raise DecodeError(path, "its video codec is not supported by this build")
        if not (cc.width > 0 and cc.height > 0):
            raise DecodeError(path, f"the {cc.name} video stream has no picture size")
        astreams = [s for s in container.streams.audio if s.codec_context is not None]
        a_cc = astreams[0].codec_context if astreams else None
        claimed = int(vs.frames or 0)
        if claimed <= 0 and vs.average_rate and container.duration:
            claimed = int(float(vs.average_rate) * container.duration / 1e6)
        duration = None
        if container.duration and container.duration > 0:
            duration = container.duration / 1e6
        elif vs.duration and vs.time_base:
            duration = float(vs.duration * vs.time_base)
        return _Streams(
            container=str(container.format.name),
            codec=str(cc.name),
            width=int(cc.width),
            height=int(cc.height),
            claimed_frames=claimed,
            duration_s=duration,
            has_audio=a_cc is not None,
            audio_sample_rate=int(a_cc.sample_rate) if a_cc is not None else None,
            audio_channels=int(a_cc.channels) if a_cc is not None else None,
        )


@dataclass(frozen=True)
class ClipHeader:
    """What a clip's container header says, read without decoding or scanning the file
    (cheap even for hours of footage): for checking limits before any work is done.

    ``duration_s`` is ``None`` when the container records no duration (WebM or Matroska
    written to a pipe); :func:`probe` measures those.
    """

    container: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str  # the video codec, e.g. "h264"
    width: int
    height: int
    duration_s: float | None
    has_audio: bool


def read_header(path: str | os.PathLike) -> ClipHeader:
    """The container header's video parameters and duration (PyAV; nothing decoded).

    Raises:
        DecodeError: as :func:`probe`, for files that are not a readable video.
    """
    path = os.path.abspath(os.fspath(path))
    _check_file(path)
    st = _read_streams(path)
    return ClipHeader(st.container, st.codec, st.width, st.height, st.duration_s, st.has_audio)


def probe(path: str | os.PathLike, decoder: str = "auto") -> ClipInfo:
    """Read a clip's metadata (frame count, fps, duration, audio track, and which decoder
    reads its frames) without decoding the clip.

    ``decoder``: as ``DecodeOptions.decoder``. With ``"auto"`` decord is tried first
    (indexing the packets and decoding frame 0 at 32x32) except in ASF and MPEG-PS/TS, and
    PyAV measures the clip when decord is not used: one demux pass over the file, nothing
    decoded.

    Raises:
        DecodeError: missing path, directory, empty file, or not a decodable video; the
            reason is one line in the user's terms.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    path = os.path.abspath(os.fspath(path))
    _check_file(path)
    streams = _read_streams(path)
    timeline = None
    if decoder != "pyav":
        try:
            timeline = _decord_timeline(path, streams)
        except DecodeError:
            if decoder == "decord":
                raise
    used = "decord" if timeline is not None else "pyav"
    if timeline is None:
        timeline = _pyav_timeline(path)
    n_frames = len(timeline.starts)
    return ClipInfo(
        path=path,
        fps=float(n_frames / timeline.duration),
        n_frames=int(n_frames),
        duration_s=float(timeline.duration),
        width=streams.width,
        height=streams.height,
        has_audio=streams.has_audio,
        audio_sample_rate=streams.audio_sample_rate,
        audio_channels=streams.audio_channels,
        decoder=used,
    )


# -- decord -------------------------------------------------------------------------------


def _open_video(path: str, size: int | None = None, threads: int = 1):
    import decord

    kwargs = {"num_threads": threads}
    if size is not None:
        kwargs.update(width=size, height=size)
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), **kwargs)
    except Exception as err:
        raise DecodeError(path, _decord_reason(err)) from None


def _frame_starts(vr) -> np.ndarray:
    n = len(vr)
    ts = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
    return ts[:, 0]


class _Timeline(NamedTuple):
    """Frame start times ``(N,)`` float64 seconds (ascending), the clip's duration in
    seconds (the end of the last frame), and the stream tick that is time 0."""

    starts: np.ndarray
    duration: float
    origin: int | None = None


def _decord_timeline(path: str, streams: _Streams) -> _Timeline:
    """The timeline from decord's index, after checking that decord decodes frame 0."""
    # decord reserves memory for the frame count the header claims, and a bogus one (an
    # AVI written to a pipe claims 2^30 frames) aborts the process: no file holds fewer
    # than 16 bytes per frame.
    if streams.claimed_frames * 16 > os.path.getsize(path):
        raise DecodeError(path, "decord cannot read it: the header's frame count is wrong")
    if streams.container in _DECORD_MISSEEKS:
        what = _DECORD_MISSEEKS[streams.container]
        raise DecodeError(path, f"decord cannot read it: it seeks to wrong frames in {what}")
    vr = _open_video(path, 32)
    try:
        n_frames = len(vr)
        if n_frames == 0:
            raise DecodeError(path, "no video frames")
        try:
            vr.get_batch([0])
        except Exception as err:
            raise DecodeError(path, _decord_reason(err)) from None
        last = vr.get_frame_timestamp(n_frames - 1)
        duration = float(np.asarray(last).reshape(-1)[1])
        if not duration > 0:
            duration = n_frames / max(vr.get_avg_fps(), 1e-6)
        return _Timeline(_frame_starts(vr), duration)
    finally:
        del vr


# -- PyAV ---------------------------------------------------------------------------------


def _seconds(ticks: np.ndarray, origin: int, time_base) -> np.ndarray:
    """Stream ticks to seconds from ``origin``, rounded to float32 as decord stores them."""
    sec = (ticks.astype(np.int64) - origin) * (time_base.numerator / time_base.denominator)
    return sec.astype(np.float32).astype(np.float64)


def _pyav_timeline(path: str) -> _Timeline:
    """The timeline from the video packets' timestamps: one demux pass that reads the
    file and decodes nothing (no duration or frame count from the header is needed).

    Raises:
        DecodeError: the container breaks off (damaged or truncated), an MP4/MOV holds
            fewer frames than its sample table lists, or there are no frames.
    """
    import av

    ticks: list[int] = []
    durations: list[int] = []
    good_bytes = 0
    with _open_av(path) as container:
        vs = container.streams.video[0]
        try:
            for packet in container.demux(vs):
                if packet.size == 0:  # the end-of-stream marker
                    continue
                tick = packet.pts if packet.pts is not None else packet.dts
                if tick is None:
                    continue
                ticks.append(tick)
                durations.append(packet.duration or 0)
                if packet.pos is not None and packet.pos >= 0:
                    good_bytes = packet.pos + packet.size
        except av.error.FFmpegError:
            size = os.path.getsize(path)
            raise DecodeError(
                path,
                f"the container is damaged or truncated at byte {good_bytes} of {size} "
                f"({len(ticks)} frames readable)",
            ) from None
        if not ticks:
            raise DecodeError(path, "no video frames")
        listed = int(vs.frames or 0)
        if container.format.name.startswith("mov,") and len(ticks) < listed:
            # An MP4/MOV sample table lists every frame: fewer in the file means it was cut.
            size = os.path.getsize(path)
            raise DecodeError(
                path,
                f"the MP4/MOV file is truncated: it holds {len(ticks)} of its {listed} "
                f"frames ({size} bytes)",
            )
        order = np.argsort(np.asarray(ticks, dtype=np.int64), kind="stable")
        sorted_ticks = np.asarray(ticks, dtype=np.int64)[order]
        origin = vs.start_time if vs.start_time is not None else int(sorted_ticks[0])
        starts = _seconds(sorted_ticks, origin, vs.time_base)
        last_ticks = durations[int(order[-1])]
        rate = vs.average_rate or vs.guessed_rate
    if last_ticks > 0:
        end = _seconds(sorted_ticks[-1:] + last_ticks, origin, vs.time_base)[0]
    elif len(starts) > 1:
        end = starts[-1] + float(np.median(np.diff(starts)))
    else:
        end = starts[-1] + (1 / float(rate) if rate else 0.0)
    if not end > 0:
        end = len(starts) / float(rate or 25)
    return _Timeline(starts, float(end), origin)


class _Scaler:
    """Decoded frames to ``(S, S, 3)`` uint8 RGB through decord's filter chain
    (``[transpose,]scale=S:S``, bilinear, ``rgb24``), rebuilt when the frames change size,
    pixel format or rotation."""

    _TRANSPOSE = {90: ("1",), 180: ("1", "1"), 270: ("2",)}  # clockwise degrees (decord)

    def __init__(self, size: int, time_base):
        self.size = size
        self.time_base = time_base
        self.key: tuple | None = None
        self.graph = None

    def __call__(self, frame) -> np.ndarray:
        key = (frame.width, frame.height, frame.format.name, frame.rotation)
        if key != self.key:
            self._build(frame)
            self.key = key
        self.graph.push(frame)
        return self.graph.pull().to_ndarray()

    def _build(self, frame) -> None:
        import av

        graph = av.filter.Graph()
        graph.threads = 1  # as decord
        chain = [
            graph.add_buffer(
                width=frame.width,
                height=frame.height,
                format=frame.format.name,
                time_base=frame.time_base or self.time_base,
            )
        ]
        # PyAV's rotation is counter-clockwise; decord transposes by the clockwise angle.
        for arg in self._TRANSPOSE.get(int(-frame.rotation) % 360, ()):
            chain.append(graph.add("transpose", arg))
        chain.append(graph.add("scale", f"{self.size}:{self.size}:flags=bilinear"))
        chain.append(graph.add("format", "rgb24"))
        chain.append(graph.add("buffersink"))
        for a, b in itertools.pairwise(chain):
            a.link_to(b)
        graph.configure()
        self.graph = graph


def _pyav_frames(
    path: str, targets: np.ndarray, size: int, threads: int, origin: int | None = None
) -> Iterator[np.ndarray]:
    """One ``(size, size, 3)`` uint8 frame per target time (seconds on the timeline of
    :func:`_pyav_timeline`, whose ``origin`` it takes, ascending): the frame on screen at
    that time. Decodes the video once, in order, holding one decoded frame; a frame chosen
    for several targets is scaled once. Packets that fail to decode are skipped (their
    targets see the frame before).

    Raises:
        DecodeError: nothing decodes, or decoding stops more than 1 s before the last target.
    """
    done = 0
    with _open_av(path) as container:
        vs = container.streams.video[0]
        vs.codec_context.thread_count = threads
        if threads > 1:
            vs.codec_context.thread_type = "AUTO"
        if origin is None:
            origin = vs.start_time
        scaler = _Scaler(size, vs.time_base)
        held = held_rgb = None
        held_t = -math.inf
        step = 1 / float(vs.average_rate or vs.guessed_rate or 25)
        bad_at: list[int] = []
        for frame in _decoded_frames(container.demux(vs), bad_at):
            tick = frame.pts if frame.pts is not None else frame.dts
            if tick is None:
                t = held_t + step
            else:
                if origin is None:
                    origin = tick
                t = float(_seconds(np.array([tick]), origin, vs.time_base)[0])
            while done < len(targets) and targets[done] < t:
                if held is None:
                    break  # before the first frame: the first frame stands in
                if held_rgb is None:
                    held_rgb = scaler(held)
                yield held_rgb
                done += 1
            held, held_rgb, held_t = frame, None, t
            if done == len(targets):
                return
        _check_decoded(path, vs.codec_context.name, held is not None, held_t, targets, done, bad_at)
        rgb = scaler(held) if held_rgb is None else held_rgb
        for _ in range(done, len(targets)):
            yield rgb


def _decoded_frames(packets: Iterator, bad_at: list[int]) -> Iterator:
    """The frames of ``packets`` in decode order. A packet that fails to decode is skipped
    (the first such packet's byte offset is appended to ``bad_at``); a container that
    breaks off ends the frames (:func:`_check_decoded` decides)."""
    import av

    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError:
            break  # the container breaks off: the truncation check decides
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            if not bad_at and packet.pos is not None:
                bad_at.append(packet.pos)
            continue
        yield from frames


def _check_decoded(
    path: str,
    codec: str,
    any_frame: bool,
    last_t: float,
    targets: np.ndarray,
    done: int,
    bad_at: list[int],
) -> None:
    """Raise DecodeError when nothing decoded, or decoding stopped (at ``last_t`` seconds)
    more than 1 s before the last of the targets not yet served (``done`` served)."""
    where = f" (damaged data at byte {bad_at[0]})" if bad_at else ""
    if not any_frame:
        raise DecodeError(path, f"no frame of its {codec} video decodes{where}")
    if done < len(targets) and targets[-1] > last_t + 1.0:
        raise DecodeError(
            path,
            f"the video stops decoding at {last_t:.2f}s of {targets[-1]:.2f}s{where}",
        )


# -- the segment grid -----------------------------------------------------------------------


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


def _grid_indices(info: ClipInfo, opts: DecodeOptions, starts: np.ndarray) -> np.ndarray:
    """``(T, K)`` indices of the sampled frames on the timeline ``starts``."""
    bounds = segment_bounds(info, opts, starts)
    if opts.segment_frames is not None:
        fb = segment_frame_bounds(info, opts)
        k = opts.frames_per_segment
        offs = np.floor((np.arange(k) + 0.5) * opts.segment_frames / k).astype(np.int64)
        return np.minimum(fb[:-1, None] + offs[None, :], len(starts) - 1)
    return _sample_indices(bounds, starts, opts.frames_per_segment)


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
            info.path, f"the audio track cannot be decoded ({_ffmpeg_reason(err)})"
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


# -- chunks -----------------------------------------------------------------------------------


def iter_chunks(
    path: str | os.PathLike, opts: DecodeOptions | None = None, info: ClipInfo | None = None
) -> Iterator[ClipChunk]:
    """Decode a clip ``opts.chunk_segments`` segments at a time.

    ``info``: this path's :func:`probe` result, when the caller has it already (its
    ``decoder`` is used unless ``opts.decoder`` forces another).

    Memory: one chunk's frames ``(chunk_segments, K, S, S, 3)`` plus the clip's audio at
    ``opts.sample_rate`` (16 kHz mono float32 is 3.8 MB per minute); the PyAV path adds
    one decoded frame at the source size.

    Raises:
        DecodeError: the file is missing, empty, not a video, truncated, or its audio and
            video lengths disagree by more than one segment.
    """
    opts = opts or DecodeOptions()
    info = info or probe(path, opts.decoder)
    if opts.decoder not in ("auto", info.decoder):
        info = probe(info.path, opts.decoder)
    if info.decoder == "decord":
        yield from _decord_chunks(info, opts)
    else:
        timeline = _pyav_timeline(info.path)
        yield from _pyav_chunks(info, opts, timeline.starts, 0, origin=timeline.origin)


def _chunk_ranges(n_total: int, opts: DecodeOptions) -> list[tuple[int, int]]:
    n_chunks = math.ceil(n_total / opts.chunk_segments)
    size = opts.chunk_segments
    return [(c * size, min(n_total, (c + 1) * size)) for c in range(n_chunks)]


def _make_chunk(
    info: ClipInfo,
    opts: DecodeOptions,
    c: int,
    ranges: list[tuple[int, int]],
    bounds: np.ndarray,
    frames: np.ndarray,
    audio: np.ndarray,
) -> ClipChunk:
    s0, s1 = ranges[c]
    sr = opts.sample_rate
    a0, a1 = int(round(bounds[s0] * sr)), int(round(bounds[s1] * sr))
    return ClipChunk(
        info=info,
        chunk_index=c,
        n_chunks=len(ranges),
        segment_start=s0,
        n_segments_total=len(bounds) - 1,
        bounds_s=bounds[s0 : s1 + 1].copy(),
        frames=np.ascontiguousarray(
            frames.reshape(s1 - s0, opts.frames_per_segment, *frames.shape[1:])
        ),
        audio=audio[a0:a1].copy(),
        has_audio=info.has_audio,
    )


def _decord_chunks(info: ClipInfo, opts: DecodeOptions) -> Iterator[ClipChunk]:
    """decord's random access; with ``decoder="auto"``, PyAV takes over from the first
    chunk decord fails on (from the start of the clip, on PyAV's own measurement, when that
    is the first chunk)."""
    fallback = opts.decoder == "auto"
    try:
        vr = _open_video(info.path, opts.image_size, opts.threads)
    except DecodeError:
        if not fallback:
            raise
        yield from iter_chunks(info.path, opts, probe(info.path, "pyav"))
        return
    try:
        starts = _frame_starts(vr)
        bounds = segment_bounds(info, opts, starts)
        indices = _grid_indices(info, opts, starts)
        audio = None  # loaded once decord has read the first chunk
        ranges = _chunk_ranges(len(bounds) - 1, opts)
        for c, (s0, s1) in enumerate(ranges):
            flat = indices[s0:s1].reshape(-1)
            try:
                frames = vr.get_batch(flat.tolist()).asnumpy()
            except Exception as err:
                if not fallback:
                    raise DecodeError(
                        info.path, f"frames {flat[0]}..{flat[-1]}: {_decord_reason(err)}"
                    ) from None
                break
            if audio is None:
                audio = _load_audio(info, opts, float(bounds[-1]))
            yield _make_chunk(info, opts, c, ranges, bounds, frames, audio)
        else:
            return
    finally:
        del vr
    if c == 0:
        yield from iter_chunks(info.path, opts, probe(info.path, "pyav"))
    else:
        yield from _pyav_chunks(dataclasses.replace(info, decoder="pyav"), opts, starts, c, audio)


def _pyav_chunks(
    info: ClipInfo,
    opts: DecodeOptions,
    starts: np.ndarray,
    first_chunk: int,
    audio: np.ndarray | None = None,
    origin: int | None = None,
) -> Iterator[ClipChunk]:
    """Sequential decoding with PyAV from chunk ``first_chunk`` on (earlier frames are
    decoded and dropped)."""
    bounds = segment_bounds(info, opts, starts)
    indices = _grid_indices(info, opts, starts)
    if audio is None:
        audio = _load_audio(info, opts, float(bounds[-1]))
    ranges = _chunk_ranges(len(bounds) - 1, opts)
    k = opts.frames_per_segment
    targets = starts[indices[ranges[first_chunk][0] :].reshape(-1)]
    frames = _pyav_frames(info.path, targets, opts.image_size, opts.threads, origin)
    try:
        for c in range(first_chunk, len(ranges)):
            s0, s1 = ranges[c]
            batch = np.stack(list(itertools.islice(frames, (s1 - s0) * k)))
            yield _make_chunk(info, opts, c, ranges, bounds, batch, audio)
    finally:
        frames.close()


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
        info=chunks[-1].info,
        chunk_index=0,
        n_chunks=1,
        segment_start=0,
        n_segments_total=first.n_segments_total,
        bounds_s=chunk_bounds(chunks),
        frames=np.concatenate([c.frames for c in chunks]),
        audio=np.concatenate([c.audio for c in chunks]),
        has_audio=first.has_audio,
    )
