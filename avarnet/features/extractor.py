"""Turn decoded chunks into per-segment audio and visual features.

For a chunk of ``n`` segments (:class:`~avarnet.data.decode.ClipChunk`):

- **Visual** ``(n, Dv)``: the ``n * K`` frames (uint8 RGB) are scaled to [0, 1], normalised
  with the spec's mean/std, run through the timm backbone (pooled features) in batches of
  ``visual_batch_size`` frames drawn across all chunks of a call, and averaged over the K
  frames of each segment.
- **Audio** ``(n, Da)``: the chunk's waveform (16 kHz mono) is normalised to zero mean and
  unit variance when the spec says so (as ``Wav2Vec2FeatureExtractor`` does, over the whole
  chunk), cut into windows of at most ``max_audio_seconds`` (equal lengths on the 20 ms
  frame grid; the last may be shorter), run through Wav2Vec2 (``last_hidden_state``, one vector per 20 ms), and mean-pooled onto the
  chunk's segments by each frame's centre time (:mod:`avarnet.features.align`). A chunk
  without an audio track gets zeros and the backbone is not run.

Wav2Vec2-base normalises its first conv layer over time (group norm), so zero padding would
change every frame: audio windows are batched only with windows of exactly the same length,
and a batch of chunks gives the same features as each chunk alone. The audio context is
one chunk: frames near a chunk's edges see less context than they would in the whole clip.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from avarnet.features.align import pool_at_times
from avarnet.features.spec import FeatureSpec

if TYPE_CHECKING:
    from avarnet.data.decode import ClipChunk, ClipInfo

__all__ = ["ClipFeatures", "FeatureEncoders"]


class ClipFeatures(NamedTuple):
    """Features of a whole clip.

    Attributes:
        audio: ``(T, Da)`` float32, zeros when ``has_audio`` is false.
        visual: ``(T, Dv)`` float32.
        has_audio: whether the clip has an audio track.
        bounds_s: ``(T + 1,)`` float64 segment boundaries in seconds.
        info: the clip's :class:`~avarnet.data.decode.ClipInfo`.
    """

    audio: np.ndarray
    visual: np.ndarray
    has_audio: bool
    bounds_s: np.ndarray
    info: ClipInfo


def _frame_batches(arrays: Sequence[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive batches of at most ``batch_size`` rows across a list of arrays (a view
    when a batch lies inside one array)."""
    pending: list[np.ndarray] = []
    size = 0
    for arr in arrays:
        start = 0
        while start < len(arr):
            take = min(batch_size - size, len(arr) - start)
            pending.append(arr[start : start + take])
            size += take
            start += take
            if size == batch_size:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, size = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


class FeatureEncoders:
    """The audio and visual backbones of a :class:`~avarnet.features.spec.FeatureSpec`, in
    eval mode. Build with :func:`avarnet.features.backbones.build_encoders`.

    Args:
        spec: the spec the backbones implement.
        audio_model: a ``transformers.Wav2Vec2Model``.
        visual_model: a timm model returning pooled ``(B, Dv)`` features.
        device: where the backbones run (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        visual_batch_size: frames per visual forward pass.
        audio_batch_size: equal-length audio windows per Wav2Vec2 forward pass.
        max_audio_seconds: longest audio window, in seconds. The default covers one default
            chunk (``DEFAULT_CHUNK_SEGMENTS`` segments of 1 s) in one window; longer chunks
            are cut into equal windows on the 20 ms frame grid.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        audio_model: torch.nn.Module,
        visual_model: torch.nn.Module,
        *,
        device: str | torch.device = "cpu",
        visual_batch_size: int = 64,
        audio_batch_size: int = 4,
        max_audio_seconds: float = 40.0,
    ):
        if visual_batch_size < 1 or audio_batch_size < 1:
            raise ValueError("visual_batch_size and audio_batch_size must be >= 1")
        self.spec = spec
        self.device = torch.device(device)
        self.audio_model = audio_model.to(self.device).eval()
        self.visual_model = visual_model.to(self.device).eval()
        self.visual_batch_size = visual_batch_size
        self.audio_batch_size = audio_batch_size
        config = audio_model.config
        # One output frame per `hop` samples; frame i sees samples [hop*i, hop*i + receptive).
        self.hop = math.prod(config.conv_stride)
        receptive, jump = 1, 1
        for kernel, stride in zip(config.conv_kernel, config.conv_stride):
            receptive += (kernel - 1) * jump
            jump *= stride
        self.receptive = receptive
        max_samples = int(max_audio_seconds * spec.sample_rate) // self.hop * self.hop
        if max_samples < self.receptive:
            raise ValueError(f"max_audio_seconds={max_audio_seconds} is shorter than one frame")
        self.max_window = max_samples
        self._mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)

    @property
    def audio_frame_rate_hz(self) -> float:
        """Wav2Vec2 output frames per second (50 at 16 kHz)."""
        return self.spec.sample_rate / self.hop

    # -- visual ---------------------------------------------------------------------------

    def _check_frames(self, frames: np.ndarray) -> None:
        s, k = self.spec.image_size, self.spec.frames_per_segment
        if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[1:] != (k, s, s, 3):
            raise ValueError(
                f"frames must be (n, {k}, {s}, {s}, 3) uint8 for this FeatureSpec, got "
                f"{frames.shape} {frames.dtype}"
            )

    @torch.inference_mode()
    def encode_visual(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-segment visual features of several chunks.

        Args:
            frames: per chunk, ``(n_i, K, H, W, 3)`` uint8 RGB with ``H = W = image_size``.

        Returns:
            Per chunk, ``(n_i, Dv)`` float32: the mean over K frames of the pooled features.
        """
        for f in frames:
            self._check_frames(f)
        s = self.spec.image_size
        flat = [f.reshape(-1, s, s, 3) for f in frames]
        total = sum(len(f) for f in flat)
        out = torch.empty((total, self.spec.visual_dim), dtype=torch.float32)
        pos = 0
        for batch in _frame_batches(flat, self.visual_batch_size):
            x = torch.from_numpy(np.require(batch, requirements=["C", "W"]))
            x = x.to(self.device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float().div_(255.0).sub_(self._mean).div_(self._std)
            out[pos : pos + len(batch)] = self.visual_model(x).float().cpu()
            pos += len(batch)
        k = self.spec.frames_per_segment
        result, pos = [], 0
        for f in frames:
            n = f.shape[0]
            result.append(out[pos : pos + n * k].view(n, k, -1).mean(1).numpy())
            pos += n * k
        return result

    # -- audio ----------------------------------------------------------------------------

    def _windows(self, audio: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(start_sample, samples)`` windows, each a multiple of the hop long but the last;
        the chunk's waveform is normalised first, as one input."""
        if self.spec.audio_normalize:
            # Exactly Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm, over the chunk.
            audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        if len(audio) < self.receptive:  # shorter than one frame (25 ms): pad to one frame
            audio = np.pad(audio, (0, self.receptive - len(audio)))
        n_windows = math.ceil(len(audio) / self.max_window)
        length = math.ceil(len(audio) / n_windows / self.hop) * self.hop
        windows = [(s, audio[s : s + length]) for s in range(0, len(audio), length)]
        start, last = windows[-1]
        if len(last) < self.receptive:
            windows[-1] = (start, np.pad(last, (0, self.receptive - len(last))))
        return windows

    @torch.inference_mode()
    def encode_audio(
        self, audio: Sequence[np.ndarray], bounds_s: Sequence[np.ndarray], has_audio: Sequence[bool]
    ) -> list[np.ndarray]:
        """Per-segment audio features of several chunks.

        Args:
            audio: per chunk, ``(S_i,)`` float32 mono at ``sample_rate`` covering
                ``[bounds_s[i][0], bounds_s[i][-1])``.
            bounds_s: per chunk, ``(n_i + 1,)`` segment boundaries in seconds.
            has_audio: per chunk; ``False`` gives zeros without running the backbone.

        Returns:
            Per chunk, ``(n_i, Da)`` float32.

        Raises:
            ValueError: audio whose length differs from the grid's by more than one segment.
        """
        if not len(audio) == len(bounds_s) == len(has_audio):
            raise ValueError("audio, bounds_s and has_audio must have one entry per chunk")
        sr = self.spec.sample_rate
        # Windows grouped by length, so that a batch never needs padding.
        groups: dict[int, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
        window_starts: dict[int, list[int]] = {}
        for i, (a, flag) in enumerate(zip(audio, has_audio)):
            if not flag:
                continue
            a = np.asarray(a, dtype=np.float32).reshape(-1)
            windows = self._windows(a)
            window_starts[i] = [start for start, _ in windows]
            for j, (_, samples) in enumerate(windows):
                groups[len(samples)].append((i, j, samples))
        hidden: dict[tuple[int, int], np.ndarray] = {}
        for items in groups.values():
            for s in range(0, len(items), self.audio_batch_size):
                part = items[s : s + self.audio_batch_size]
                x = torch.from_numpy(np.stack([w for _, _, w in part])).to(self.device)
                h = self.audio_model(x).last_hidden_state.float().cpu().numpy()
                for (i, j, _), hi in zip(part, h):
                    hidden[(i, j)] = hi
        out = []
        for i, b in enumerate(bounds_s):
            b = np.asarray(b, dtype=np.float64)
            if i not in window_starts:
                out.append(np.zeros((len(b) - 1, self.spec.audio_dim), np.float32))
                continue
            parts, centres = [], []
            for j, start in enumerate(window_starts[i]):
                h = hidden[(i, j)]
                parts.append(h)
                samples = start + self.hop * np.arange(len(h)) + self.receptive / 2
                centres.append(b[0] + samples / sr)
            out.append(
                pool_at_times(np.concatenate(parts), np.concatenate(centres), b, self.hop / sr)
            )
        return out

    # -- chunks and clips -----------------------------------------------------------------

    def encode_chunks(self, chunks: Sequence[ClipChunk]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Encode decoded chunks (of one or several clips) together.

        Uses only the chunks' ``frames``, ``audio``, ``bounds_s`` and ``has_audio``.

        Returns:
            Per chunk, ``(audio (n, Da), visual (n, Dv))`` float32, one row per segment.
        """
        for c in chunks:
            if len(c.bounds_s) != c.frames.shape[0] + 1:
                raise ValueError(
                    f"chunk has {c.frames.shape[0]} segments of frames but "
                    f"{len(c.bounds_s) - 1} segment bounds"
                )
        visual = self.encode_visual([c.frames for c in chunks])
        audio = self.encode_audio(
            [c.audio for c in chunks], [c.bounds_s for c in chunks], [c.has_audio for c in chunks]
        )
        return list(zip(audio, visual))

    def encode_clip(
        self,
        path: str | os.PathLike,
        *,
        threads: int = 1,
        decoder: str = "auto",
    ) -> ClipFeatures:
        """Decode and encode a whole clip, chunk by chunk (bounded memory): the spec's
        ``chunk_segments`` segments at a time, which is also the audio context.

        Args:
            path: a video file.
            threads: decoder threads.
            decoder: ``"auto"`` (decord, PyAV where decord cannot read the clip), ``"decord"``
                or ``"pyav"``; ``info.decoder`` of the result says which one read it.

        Raises:
            avarnet.data.decode.DecodeError: the clip cannot be decoded.
        """
        from avarnet.data.decode import iter_chunks

        opts = self.spec.decode_options(threads=threads, decoder=decoder)
        audio, visual, bounds = [], [], []
        chunk = None
        for chunk in iter_chunks(path, opts):
            ((a, v),) = self.encode_chunks([chunk])
            audio.append(a)
            visual.append(v)
            bounds.append(chunk.bounds_s if not bounds else chunk.bounds_s[1:])
        assert chunk is not None  # iter_chunks yields at least one chunk or raises
        return ClipFeatures(
            audio=np.concatenate(audio),
            visual=np.concatenate(visual),
            has_audio=chunk.has_audio,
            bounds_s=np.concatenate(bounds),
            info=chunk.info,
        )
