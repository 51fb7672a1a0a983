"""The built-in audio-visual benchmark: real MP4 files (H.264 + AAC) written with PyAV.

Ten classes with the VAAR names (:data:`CLASSES`). Class ``i`` shows visual signature
``i // 2`` and plays audio signature ``(i // 2 + i % 2) % 5`` (:data:`SIGNATURES`), so every
visual signature is shared by exactly two classes, every audio signature by exactly two
other classes, and only the pair identifies the class: one modality alone cannot beat
about 50 % accuracy, both together can reach 100 %.

- Visual signatures (:data:`VISUAL_SIGNATURES`): a bouncing red ball, scrolling green
  bars, blue full-frame flashes, jittering yellow squares, expanding magenta rings. Each has
  its own colour and motion, so colour/motion statistics and a small random-init CNN's
  pooled features separate them at low resolution (64 px and up).
- Audio signatures (:data:`AUDIO_SIGNATURES`), in disjoint frequency bands below 6 kHz (they
  survive AAC and resampling to 16 kHz): a 400-460 Hz harmonic tone, 1.6-2.6 kHz chirps,
  3.5-5.5 kHz hiss, 1 kHz beeps at 4-6 Hz, and 60-220 Hz rumble.
- The event (the signature pair) occupies a random 40-80 % interval of each clip; outside
  it the scene is a neutral grey background with a slowly drifting texture and pixel noise,
  and the audio is quiet pink noise (50 Hz - 7 kHz). For anomalous classes the manifest row's
  ``gt_intervals`` is ``[[start_frame, end_frame]]`` (end exclusive); ``Normal`` shows its
  signature pair too (it is a class like the others) but ``gt_intervals = []``.
  ``gt_available`` is true for every row.
- A fraction of clips is degraded, one modality each: ``dark`` (video gain 0.2-0.3),
  ``occluded`` (a static box over 27-54 % of the frame) or ``noisy`` (broadband audio noise
  at about -3 dB relative to the signature). Optionally some clips have no audio track.

Everything is deterministic for a seed: clip ``j`` of class ``c`` draws from
``numpy.random.SeedSequence([seed, c, j])``, and x264 runs single-threaded, so two
generations give byte-identical files (with the same FFmpeg build). It is a test bed for
the workflow, not a claim about real-world accuracy.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from avarnet.config import DataConfig, SynthConfig
from avarnet.data.manifest import assign_splits, write_manifest_csv

__all__ = [
    "AUDIO_SIGNATURES",
    "CLASSES",
    "DEGRADATIONS",
    "INFO_FILE",
    "NORMAL_CLASS",
    "SIGNATURES",
    "VISUAL_SIGNATURES",
    "SyntheticClip",
    "generate_benchmark",
    "render_clip",
    "write_av_clip",
]

CLASSES = (
    "Abuse",
    "BabyCry",
    "Crash",
    "Brawling",
    "Explosion",
    "Intruder",
    "Normal",
    "Pain",
    "PoliceSiren",
    "Vandalism",
)
NORMAL_CLASS = "Normal"
VISUAL_SIGNATURES = ("red ball", "green bars", "blue flashes", "yellow squares", "magenta rings")
AUDIO_SIGNATURES = ("tone", "chirps", "hiss", "beeps", "rumble")
# class -> (visual signature index, audio signature index)
SIGNATURES: dict[str, tuple[int, int]] = {
    name: (i // 2, (i // 2 + i % 2) % 5) for i, name in enumerate(CLASSES)
}
DEGRADATIONS = ("dark", "occluded", "noisy")
INFO_FILE = "synthetic.json"

_COLOURS = np.array(
    [[215, 35, 35], [40, 190, 60], [45, 75, 230], [235, 215, 30], [210, 50, 200]],
    dtype=np.float32,
)
_RAMP_S = 0.02  # audio event fade in/out (seconds), avoids broadband clicks


@dataclass(frozen=True)
class SyntheticClip:
    """One rendered clip, before encoding.

    Attributes:
        video: ``(N, H, W, 3)`` uint8 RGB, ``N = round(seconds * fps)`` frames.
        audio: ``(C, S)`` float32 in ``[-1, 1]`` at ``audio_rate`` Hz, ``S = N / fps *
            audio_rate`` samples (same duration as the video); ``None`` without audio.
        event_frames: ``(start, end)`` frame indices of the event, end exclusive.
        degradation: one of :data:`DEGRADATIONS` or ``None``.
    """

    label: str
    video: np.ndarray
    audio: np.ndarray | None
    fps: float
    audio_rate: int
    event_frames: tuple[int, int]
    degradation: str | None

    @property
    def event_seconds(self) -> tuple[float, float]:
        """The event as ``(start, end)`` seconds."""
        return self.event_frames[0] / self.fps, self.event_frames[1] / self.fps


# --------------------------------------------------------------------------- writing
def write_av_clip(
    path: str | os.PathLike,
    video: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    audio_rate: int | None = None,
    *,
    pts: Sequence[int] | None = None,
    crf: int = 18,
    preset: str = "veryfast",
) -> Path:
    """Write an MP4 file: H.264 video (libx264, yuv420p) and, optionally, AAC audio.

    Args:
        path: output file (``.mp4`` container whatever the suffix).
        video: ``(N, H, W, 3)`` uint8 RGB frames, ``N >= 1``, ``H`` and ``W`` even.
        fps: frame rate in frames per second (may be fractional, e.g. ``30000 / 1001``).
        audio: ``(C, S)`` or ``(S,)`` float32 samples in ``[-1, 1]`` (clipped), ``C`` = 1 or
            2 channels; ``None`` writes a file without an audio track. Written as given:
            its length need not match the video's.
        audio_rate: audio sample rate in Hz (required with ``audio``; e.g. 16000, 44100,
            48000).
        pts: variable frame rate: frame ``i`` is shown from ``pts[i] / fps`` seconds
            (strictly increasing integers in ticks of ``1 / fps``); the last frame lasts
            one tick. ``None``: constant rate, ``pts[i] = i``.
        crf, preset: x264 quality and speed. x264 runs single-threaded, without B-frames
            and without macroblock-tree rate control, so the same input gives the same
            bytes, and frame timestamps start at 0 (decode order = display order).

    Returns:
        ``Path(path)``.
    """
    import av

    video, ticks, audio = _checked_clip(video, pts, audio, audio_rate)
    h, w = video.shape[1:3]
    rate = Fraction(fps).limit_denominator(1_000_000)
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        vs = _add_video_stream(container, rate, w, h, crf=crf, preset=preset)
        astream = None
        if audio is not None:
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            astream = container.add_stream("aac", rate=int(audio_rate), layout=layout)
            astream.bit_rate = 64000 * audio.shape[0]
        for frame_rgb, tick in zip(video, ticks):
            frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
            frame.pts, frame.time_base = int(tick), 1 / rate
            container.mux(vs.encode(frame))
        container.mux(vs.encode(None))
        if astream is not None:
            _mux_audio(container, astream, audio, int(audio_rate))
    return path


def _checked_clip(
    video: np.ndarray,
    pts: Sequence[int] | None,
    audio: np.ndarray | None,
    audio_rate: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(video, ticks (N,), audio (C, S) clipped or None)``, once they are valid."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or not len(video):
        raise ValueError(f"video must be (N, H, W, 3) uint8 with N >= 1, got {video.shape}")
    n, h, w = video.shape[:3]
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs an even width and height, got {w}x{h}")
    ticks = np.arange(n) if pts is None else np.asarray(pts, dtype=np.int64)
    if ticks.shape != (n,) or np.any(np.diff(ticks) <= 0):
        raise ValueError("pts must hold one strictly increasing integer per frame")
    if audio is not None:
        audio = np.clip(np.asarray(audio, dtype=np.float32), -1, 1)
        audio = audio[None, :] if audio.ndim == 1 else audio
        if audio.ndim != 2 or audio.shape[0] not in (1, 2):
            raise ValueError(f"audio must be (S,) or (C, S) with C in (1, 2), got {audio.shape}")
        if not audio_rate:
            raise ValueError("audio_rate is required with audio")
    return video, ticks, audio


def _add_video_stream(container, rate: Fraction, w: int, h: int, *, crf: int, preset: str):
    """The deterministic libx264 yuv420p stream of ``container`` (see :func:`write_av_clip`)."""
    vs = container.add_stream(
        "libx264",
        rate=rate,
        # Single-threaded and without macroblock-tree rate control: x264's mbtree
        # lookahead made output vary between runs for some frame sizes (e.g. 96x80).
        options={
            "preset": preset,
            "crf": str(crf),
            "threads": "1",
            "x264-params": "bframes=0:no-mbtree=1",
        },
    )
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    vs.codec_context.thread_count = 1
    vs.codec_context.time_base = 1 / rate
    vs.codec_context.gop_size = max(1, round(2 * float(rate)))  # a keyframe every ~2 s
    return vs


def _mux_audio(container, astream, audio: np.ndarray, audio_rate: int) -> None:
    """Encode ``audio (C, S)`` in the stream's frame size and mux it, then flush."""
    import av

    layout = astream.codec_context.layout.name
    step = astream.codec_context.frame_size or 1024
    for start in range(0, audio.shape[1], step):
        chunk = np.ascontiguousarray(audio[:, start : start + step])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = audio_rate
        frame.pts, frame.time_base = start, Fraction(1, audio_rate)
        container.mux(astream.encode(frame))
    container.mux(astream.encode(None))


# --------------------------------------------------------------------------- rendering
def _band_noise(
    rng: np.random.Generator, n: int, rate: int, lo: float, hi: float, pink: bool = False
) -> np.ndarray:
    """``(n,)`` float32 noise with energy only in ``[lo, hi]`` Hz (white, or pink: power
    falling as 1/f), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    spec[(freqs < lo) | (freqs > hi)] = 0
    if pink:
        spec /= np.sqrt(np.maximum(freqs, lo))
    x = np.fft.irfft(spec, n)
    return (x / max(float(np.sqrt(np.mean(x**2))), 1e-12)).astype(np.float32)


def _audio_signature(
    kind: int, rng: np.random.Generator, t: np.ndarray, te: np.ndarray, rate: int
) -> np.ndarray:
    """Signature ``kind`` over absolute times ``t`` (s) and event-relative times ``te`` (s)."""
    n = len(t)
    if kind == 0:  # harmonic tone
        f0, ph = rng.uniform(400, 460), rng.uniform(0, 2 * np.pi)
        return np.sin(2 * np.pi * f0 * t + ph) + 0.4 * np.sin(4 * np.pi * f0 * t + ph)
    if kind == 1:  # up-chirps, 1.6 -> 2.6 kHz, each faded in and out
        period = rng.uniform(0.2, 0.3)
        u = np.mod(te, period) / period
        phase = 2 * np.pi * period * (1600 * u + 500 * u**2)
        return np.sin(np.pi * u) ** 2 * np.sin(phase)
    if kind == 2:  # hiss
        return _band_noise(rng, n, rate, 3500, 5500)
    if kind == 3:  # beeps: a ~1 kHz tone gated at 4-6 Hz with soft edges
        f, gate = rng.uniform(950, 1100), rng.uniform(4, 6)
        g = 0.5 * (1 + np.tanh(8 * np.sin(2 * np.pi * gate * te)))
        return g * np.sin(2 * np.pi * f * t)
    # rumble: low noise band with a slow swell
    swell = 0.7 + 0.3 * np.sin(2 * np.pi * rng.uniform(1, 2) * te)
    return swell * _band_noise(rng, n, rate, 60, 220)


def _render_audio(
    kind: int,
    rng: np.random.Generator,
    drng: np.random.Generator,
    n_samples: int,
    rate: int,
    channels: int,
    event_s: tuple[float, float],
    noisy: bool,
) -> np.ndarray:
    t = np.arange(n_samples) / rate
    te = t - event_s[0]
    x = rng.uniform(0.004, 0.012) * _band_noise(rng, n_samples, rate, 50, 7000, pink=True)
    env = np.clip(np.minimum(te, event_s[1] - t) / _RAMP_S, 0, 1)
    sig = _audio_signature(kind, rng, t, te, rate) * env
    inside = env > 0
    if inside.any():
        rms = float(np.sqrt(np.mean(sig[inside] ** 2)))
        x = x + sig * (rng.uniform(0.1, 0.16) / max(rms, 1e-12))
    if noisy:
        x = x + drng.uniform(0.12, 0.18) * _band_noise(drng, n_samples, rate, 100, 7000)
    gains = rng.uniform(0.8, 1.0, size=(channels, 1))  # a little stereo panning
    return np.clip(gains * x[None, :], -1, 1).astype(np.float32)


def _soft_disc(xx, yy, cx, cy, r) -> np.ndarray:
    return np.clip(r - np.hypot(xx - cx, yy - cy) + 0.5, 0, 1)


def _bounce(pos: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions into ``[lo, hi]`` as a ball bouncing between two walls."""
    span = hi - lo
    p = np.mod(pos - lo, 2 * span)
    return lo + np.where(p > span, 2 * span - p, p)


class _VisualSignature:
    """Per-clip parameters of a visual signature; ``alpha(te)`` is its ``(H, W)`` coverage
    at ``te`` seconds after the event start."""

    def __init__(self, kind: int, rng: np.random.Generator, w: int, h: int):
        self.kind, self.w, self.h = kind, w, h
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        self.colour = np.clip(_COLOURS[kind] + rng.uniform(-12, 12, 3), 0, 255).astype(np.float32)
        if kind == 0:  # red ball
            self.r = rng.uniform(0.22, 0.3) * h
            self.x0, self.vx = rng.uniform(0, w), rng.choice([-1, 1]) * rng.uniform(0.5, 0.9) * w
            self.cy, self.fy = rng.uniform(0.35, 0.65) * h, rng.uniform(0.5, 1.0)
        elif kind == 1:  # green bars
            self.period = rng.uniform(0.22, 0.32) * w
            self.speed = rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
            self.phase = rng.uniform(0, 1)
        elif kind == 2:  # blue flashes
            self.rate, self.phase = rng.uniform(2.5, 4.0), rng.uniform(0, 1)
        elif kind == 3:  # yellow squares
            m = int(rng.integers(6, 10))
            self.side = rng.uniform(0.1, 0.14) * h
            self.p0 = rng.uniform(0, 1, (m, 2)) * [w, h]
            self.v = rng.uniform(-0.5, 0.5, (m, 2)) * w
        else:  # magenta rings
            self.cx, self.cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
            self.period, self.thick = rng.uniform(0.6, 0.9), rng.uniform(0.1, 0.14) * h
            self.rmax = 0.75 * max(w, h)

    def alpha(self, te: float) -> np.ndarray | float:
        xx, yy, w, h = self.xx, self.yy, self.w, self.h
        if self.kind == 0:
            cx = _bounce(np.array(self.x0 + self.vx * te), self.r, w - self.r)
            cy = self.cy + 0.1 * h * np.sin(2 * np.pi * self.fy * te)
            return _soft_disc(xx, yy, float(cx), cy, self.r)
        if self.kind == 1:
            wave = np.sin(2 * np.pi * (xx / self.period - self.speed * te + self.phase))
            return 0.85 * np.clip((wave - 0.2) * 3, 0, 1)
        if self.kind == 2:
            return 0.75 if (te * self.rate + self.phase) % 1.0 < 0.5 else 0.2
        if self.kind == 3:
            pos = self.p0 + self.v * te
            px = _bounce(pos[:, 0], 0, w)[:, None, None]
            py = _bounce(pos[:, 1], 0, h)[:, None, None]
            half = self.side / 2
            ax = np.clip(half - np.abs(xx[None] - px) + 0.5, 0, 1)
            ay = np.clip(half - np.abs(yy[None] - py) + 0.5, 0, 1)
            return (ax * ay).max(axis=0)
        radius = (te / self.period % 1.0) * self.rmax
        dist = np.hypot(xx - self.cx, yy - self.cy)
        ring = np.clip(self.thick / 2 - np.abs(dist - radius) + 0.5, 0, 1)
        return np.maximum(ring, _soft_disc(xx, yy, self.cx, self.cy, 0.12 * h))


def _render_video(
    kind: int,
    rng: np.random.Generator,
    drng: np.random.Generator,
    n: int,
    fps: float,
    w: int,
    h: int,
    event: tuple[int, int],
    degradation: str | None,
) -> np.ndarray:
    sig = _VisualSignature(kind, rng, w, h)
    yy, xx = sig.yy, sig.xx
    base = rng.uniform(80, 140) + rng.uniform(-8, 8, 3)
    static = base[None, None, :] + rng.uniform(-25, 25) * (yy / h - 0.5)[..., None]
    angle, cycles = rng.uniform(0, np.pi), rng.uniform(1.5, 3.5)
    kx, ky = 2 * np.pi * cycles * np.cos(angle) / w, 2 * np.pi * cycles * np.sin(angle) / w
    drift, tex_amp = rng.uniform(0.05, 0.2), rng.uniform(4, 8)
    gain, box = 1.0, None
    if degradation == "dark":
        gain = drng.uniform(0.2, 0.3)
    elif degradation == "occluded":
        bw, bh = int(drng.uniform(0.45, 0.6) * w), int(drng.uniform(0.6, 0.9) * h)
        x0, y0 = int(drng.integers(0, w - bw + 1)), int(drng.integers(0, h - bh + 1))
        box = (slice(y0, y0 + bh), slice(x0, x0 + bw), drng.uniform(20, 50))
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        t = i / fps
        texture = tex_amp * np.sin(kx * xx + ky * yy - 2 * np.pi * drift * t)
        frame = static + texture[..., None]
        if event[0] <= i < event[1]:
            a = sig.alpha((i - event[0]) / fps)
            a = a[..., None] if isinstance(a, np.ndarray) else a
            frame = frame * (1 - a) + sig.colour * a
        frame = frame + rng.normal(0, 3, (h, w, 1))
        if box is not None:
            frame[box[0], box[1]] = box[2]
        out[i] = np.clip(frame * gain + 0.5, 0, 255)
    return out


def render_clip(
    label: str,
    *,
    seed: int = 0,
    index: int = 0,
    seconds: float = 4.0,
    fps: float = 12,
    size: tuple[int, int] = (128, 96),
    audio_rate: int = 16000,
    audio_channels: int = 1,
    degradation: str | None = None,
    with_audio: bool = True,
) -> SyntheticClip:
    """Render clip ``index`` of class ``label`` (no file written).

    Args:
        label: one of :data:`CLASSES`.
        seed, index: the clip draws from ``SeedSequence([seed, CLASSES.index(label), index])``.
            The degradation draws from its own stream, so a degraded clip is the same scene.
        seconds: duration; the clip has ``max(1, round(seconds * fps))`` frames.
        fps: frames per second.
        size: ``(width, height)`` in pixels, both even.
        audio_rate, audio_channels: audio sample rate (Hz) and 1 or 2 channels.
        degradation: ``None`` or one of :data:`DEGRADATIONS`.
        with_audio: ``False`` gives ``audio=None``.
    """
    if label not in SIGNATURES:
        raise ValueError(f"unknown class {label!r}; expected one of {', '.join(CLASSES)}")
    if degradation not in (None, *DEGRADATIONS):
        raise ValueError(f"unknown degradation {degradation!r}; expected one of {DEGRADATIONS}")
    w, h = (int(v) for v in size)
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise ValueError(f"size must be (width, height), even and >= 16, got {size}")
    if audio_channels not in (1, 2):
        raise ValueError(f"audio_channels must be 1 or 2, got {audio_channels}")
    vis, aud = SIGNATURES[label]
    event_rng, video_rng, audio_rng, degrade_rng = (
        np.random.default_rng(s)
        for s in np.random.SeedSequence([seed, CLASSES.index(label), index]).spawn(4)
    )
    n = max(1, round(seconds * fps))
    length = max(1, round(event_rng.uniform(0.4, 0.8) * n))
    start = int(event_rng.integers(0, n - length + 1))
    event = (start, start + length)
    video = _render_video(vis, video_rng, degrade_rng, n, fps, w, h, event, degradation)
    audio = None
    if with_audio:
        audio = _render_audio(
            aud,
            audio_rng,
            degrade_rng,
            round(n / fps * audio_rate),
            audio_rate,
            audio_channels,
            (event[0] / fps, event[1] / fps),
            degradation == "noisy",
        )
    return SyntheticClip(label, video, audio, fps, audio_rate, event, degradation)


# --------------------------------------------------------------------------- benchmark
def _plan(
    n: int, seed: int, degrade_fraction: float, no_audio_fraction: float
) -> tuple[list[str | None], list[bool]]:
    """Which clips (by global index) are degraded, and how, and which have audio: exact
    counts ``round(fraction * n)`` (at least one for a positive fraction), the kinds cycled
    so that each appears."""
    rng = np.random.default_rng([seed, 0x5EED])

    def count(fraction: float) -> int:
        return 0 if fraction <= 0 else max(1, min(n, math.floor(fraction * n + 0.5)))

    degradations: list[str | None] = [None] * n
    for rank, k in enumerate(rng.permutation(n)[: count(degrade_fraction)]):
        degradations[k] = DEGRADATIONS[rank % len(DEGRADATIONS)]
    has_audio = [True] * n
    for k in rng.permutation(n)[: count(no_audio_fraction)]:
        has_audio[k] = False
    return degradations, has_audio


def _write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


# The defaults are the config's (one source per setting).
_SYNTH, _DATA = SynthConfig(), DataConfig()


def generate_benchmark(
    out_dir: str | os.PathLike,
    *,
    clips_per_class: int = _SYNTH.clips_per_class,
    seconds: float = _SYNTH.seconds,
    seed: int = _SYNTH.seed,
    fps: float = _SYNTH.fps,
    size: tuple[int, int] = (128, 96),
    audio_rate: int = 16000,
    audio_channels: int = 1,
    degrade_fraction: float = _SYNTH.degrade_fraction,
    no_audio_fraction: float = _SYNTH.no_audio_fraction,
    progress: Callable[[int, int], None] | None = None,
    split_fractions: tuple[float, float, float] = _DATA.split_fractions,
) -> list[dict]:
    """Write the benchmark: ``out_dir/<Class>/<Class>_<jjj>.mp4`` for each class and clip,
    ``out_dir/manifest.csv`` and ``out_dir/synthetic.json``.

    Args:
        out_dir: output folder (created; existing clips of the same names are replaced).
        clips_per_class: clips per class (10 classes).
        seconds: clip duration in seconds.
        seed: the seed of everything (content, degradations, split).
        fps: video frame rate (frames per second).
        size: ``(width, height)`` in pixels, both even.
        audio_rate, audio_channels: the AAC track's sample rate (Hz) and channel count.
        degrade_fraction: fraction of all clips degraded (dark / occluded / noisy in turn).
        no_audio_fraction: fraction of all clips written without an audio track.
        progress: called as ``progress(done, total)`` after each clip.
        split_fractions: train/val/test fractions per class.

    Returns:
        The manifest rows (``docs/INTERFACES.md``), in class then clip order, split by
        :func:`~avarnet.data.manifest.assign_splits` with ``seed`` and ``split_fractions``; identical to
        ``read_manifest(out_dir / "manifest.csv").rows``.

    ``synthetic.json`` holds the parameters and, per ``video_id``: ``label``, ``visual`` and
    ``audio`` signature indices, ``event_frames`` ``[start, end)`` (also for ``Normal``),
    ``event_seconds``, ``n_frames``, ``degradation`` (or null) and ``has_audio``.
    """
    params = {
        "clips_per_class": clips_per_class,
        "seconds": seconds,
        "seed": seed,
        "fps": fps,
        "size": size,
        "audio_rate": audio_rate,
        "audio_channels": audio_channels,
        "degrade_fraction": degrade_fraction,
        "no_audio_fraction": no_audio_fraction,
    }
    _check_benchmark_params(params)
    out = Path(os.path.abspath(os.fspath(out_dir)))
    rows, clips_info = _write_clips(out, params, progress)
    assign_splits(rows, seed, split_fractions)
    write_manifest_csv(rows, out / "manifest.csv")
    _write_json_atomic(_benchmark_info(params, clips_info), out / INFO_FILE)
    return rows


def _benchmark_info(params: dict, clips_info: dict[str, dict]) -> dict:
    """The content of ``synthetic.json`` (:func:`generate_benchmark`)."""
    return {
        "generator": "avarnet.data.synthetic",
        "params": {**params, "size": list(params["size"])},
        "classes": list(CLASSES),
        "signatures": {c: list(s) for c, s in SIGNATURES.items()},
        "visual_signatures": list(VISUAL_SIGNATURES),
        "audio_signatures": list(AUDIO_SIGNATURES),
        "clips": clips_info,
    }


def _check_benchmark_params(params: dict) -> None:
    if params["clips_per_class"] < 1 or not params["seconds"] > 0 or not params["fps"] > 0:
        raise ValueError("clips_per_class must be >= 1, seconds and fps > 0")
    for name in ("degrade_fraction", "no_audio_fraction"):
        if not 0 <= params[name] <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {params[name]}")


def _write_clips(
    out: Path, params: dict, progress: Callable[[int, int], None] | None
) -> tuple[list[dict], dict[str, dict]]:
    """Render and write every clip below ``out``: ``(manifest rows without splits, the
    ``clips`` of ``synthetic.json``)``, in class then clip order."""
    out.mkdir(parents=True, exist_ok=True)
    per_class, seed = params["clips_per_class"], params["seed"]
    total = len(CLASSES) * per_class
    degradations, has_audio = _plan(
        total, seed, params["degrade_fraction"], params["no_audio_fraction"]
    )
    rows: list[dict] = []
    clips_info: dict[str, dict] = {}
    for ci, label in enumerate(CLASSES):
        (out / label).mkdir(exist_ok=True)
        for j in range(per_class):
            k = ci * per_class + j
            clip = render_clip(
                label,
                seed=seed,
                index=j,
                seconds=params["seconds"],
                fps=params["fps"],
                size=params["size"],
                audio_rate=params["audio_rate"],
                audio_channels=params["audio_channels"],
                degradation=degradations[k],
                with_audio=has_audio[k],
            )
            row, info = _write_clip(out, label, j, clip, params)
            rows.append(row)
            clips_info[row["video_id"]] = info
            if progress is not None:
                progress(k + 1, total)
    return rows, clips_info


def _write_clip(
    out: Path, label: str, j: int, clip: SyntheticClip, params: dict
) -> tuple[dict, dict]:
    """Write clip ``j`` of ``label`` (atomically): ``(its manifest row, its info)``."""
    video_id = f"{label}/{label}_{j:03d}"
    path = out / f"{video_id}.mp4"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_av_clip(tmp, clip.video, params["fps"], clip.audio, params["audio_rate"])
    os.replace(tmp, path)
    event = list(clip.event_frames)
    row = {
        "video_id": video_id,
        "path": str(path),
        "label": label,
        "labels": [label],
        "split": None,
        "gt_intervals": [] if label == NORMAL_CLASS else [event],
        "gt_available": True,
    }
    info = {
        "label": label,
        "visual": SIGNATURES[label][0],
        "audio": SIGNATURES[label][1],
        "event_frames": event,
        "event_seconds": [round(s, 6) for s in clip.event_seconds],
        "n_frames": int(clip.video.shape[0]),
        "degradation": clip.degradation,
        "has_audio": clip.audio is not None,
    }
    return row, info
