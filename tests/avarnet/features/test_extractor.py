"""FeatureEncoders on ClipChunk-shaped inputs and on a real MP4 (tiny preset)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import numpy as np
import pytest
import torch

from avarnet.data.decode import ClipChunk, decode_clip
from avarnet.features.backbones import build_encoders, build_feature_spec
from avarnet.features.extractor import FeatureEncoders

SR = 16000


@pytest.fixture(scope="module")
def spec():
    return build_feature_spec("tiny")


@pytest.fixture(scope="module")
def enc(spec) -> FeatureEncoders:
    return build_encoders(spec)


def _chunk(spec, bounds, seed: int, has_audio: bool = True) -> ClipChunk:
    """A ClipChunk as decode produces it: frames (n, K, S, S, 3) uint8, audio on [b0, bn)."""
    rng = np.random.default_rng(seed)
    bounds = np.asarray(bounds, dtype=np.float64)
    n, k, s = len(bounds) - 1, spec.frames_per_segment, spec.image_size
    n_samples = int(round(bounds[-1] * SR)) - int(round(bounds[0] * SR))
    audio = (
        (0.1 * rng.standard_normal(n_samples)).astype(np.float32)
        if has_audio
        else np.zeros(n_samples, np.float32)
    )
    return ClipChunk(
        info=None,
        chunk_index=0,
        n_chunks=1,
        segment_start=0,
        n_segments_total=n,
        bounds_s=bounds,
        frames=rng.integers(0, 256, (n, k, s, s, 3), dtype=np.uint8),
        audio=audio,
        has_audio=has_audio,
    )


@pytest.fixture(scope="module")
def chunks(spec) -> list[ClipChunk]:
    return [
        _chunk(spec, [0, 1, 2, 3], seed=0),
        _chunk(spec, [4.0, 4.64, 5.28], seed=1),  # XD-Violence style: 16 frames at 25 fps
        _chunk(spec, [0, 1], seed=2),
    ]


def test_shapes_and_determinism_across_builds(spec, enc, chunks):
    out = enc.encode_chunks(chunks)
    assert [(a.shape, v.shape) for a, v in out] == [
        ((3, 64), (3, 88)),
        ((2, 64), (2, 88)),
        ((1, 64), (1, 88)),
    ]
    assert all(a.dtype == np.float32 and v.dtype == np.float32 for a, v in out)
    assert all(np.isfinite(a).all() and np.isfinite(v).all() for a, v in out)
    again = build_encoders(spec).encode_chunks(chunks)
    for (a, v), (a2, v2) in zip(out, again):
        np.testing.assert_array_equal(a, a2)
        np.testing.assert_array_equal(v, v2)


def test_a_batch_gives_the_same_features_as_each_chunk_alone(spec, chunks):
    # Small visual batches so that frame batches straddle chunk boundaries.
    enc = build_encoders(spec, visual_batch_size=5)
    together = enc.encode_chunks(chunks)
    for chunk, (a, v) in zip(chunks, together):
        ((a1, v1),) = enc.encode_chunks([chunk])
        np.testing.assert_allclose(a, a1, atol=1e-5)
        np.testing.assert_allclose(v, v1, atol=1e-5)


def test_audio_features_are_wav2vec2_on_the_hf_preprocessing(enc, spec):
    """End to end against the reference recipe: Wav2Vec2FeatureExtractor, the model, and the
    mean over each segment's frames (frame i covers samples [320 i, 320 i + 400))."""
    from transformers import Wav2Vec2FeatureExtractor

    chunk = _chunk(spec, [0, 1, 2], seed=3)
    ((a, _),) = enc.encode_chunks([chunk])
    fe = Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True)
    x = fe(chunk.audio, sampling_rate=SR, return_tensors="pt").input_values
    with torch.inference_mode():
        h = enc.audio_model(x).last_hidden_state[0].numpy()
    assert len(h) == 99  # centres (320 i + 200) / 16000 s: 50 in [0, 1), 49 in [1, 2)
    np.testing.assert_allclose(a, np.stack([h[:50].mean(0), h[50:].mean(0)]), atol=1e-5)


def test_long_audio_is_cut_into_windows_on_the_frame_grid(spec, enc):
    # Without waveform normalisation, 1 s windows over a 3 s chunk see exactly what 1 s
    # chunks see alone: segment t must equal the features of [t, t + 1) encoded alone.
    raw = dataclasses.replace(spec, audio_normalize=False)
    windowed = FeatureEncoders(raw, enc.audio_model, enc.visual_model, max_audio_seconds=1.0)
    whole = FeatureEncoders(raw, enc.audio_model, enc.visual_model)
    chunk = _chunk(spec, [0, 1, 2, 3], seed=4)
    a = windowed.encode_audio([chunk.audio], [chunk.bounds_s], [True])[0]
    for t in range(3):
        alone = whole.encode_audio([chunk.audio[t * SR : (t + 1) * SR]], [[t, t + 1.0]], [True])
        np.testing.assert_allclose(a[t], alone[0][0], atol=1e-5)
    assert not np.allclose(a, whole.encode_audio([chunk.audio], [chunk.bounds_s], [True])[0])


def test_no_audio_gives_zeros_without_running_the_backbone(spec, enc, chunks, monkeypatch):
    silent = _chunk(spec, [0, 1, 2], seed=5, has_audio=False)

    def fail(*args, **kwargs):
        raise AssertionError("the audio backbone ran for a chunk without audio")

    monkeypatch.setattr(enc.audio_model, "forward", fail)
    ((a, v),) = enc.encode_chunks([silent])
    assert a.shape == (2, 64) and not a.any()
    assert v.shape == (2, 88) and v.any()


def test_inputs_that_do_not_fit_the_spec_are_refused(spec, enc):
    chunk = _chunk(spec, [0, 1], seed=6)
    with pytest.raises(ValueError, match=r"\(n, 4, 64, 64, 3\) uint8"):
        enc.encode_chunks([dataclasses.replace(chunk, frames=chunk.frames[:, :, :32, :32])])
    with pytest.raises(ValueError, match="segment bounds"):
        enc.encode_chunks([dataclasses.replace(chunk, bounds_s=np.array([0.0, 1.0, 2.0]))])
    with pytest.raises(ValueError, match="more than one segment"):
        enc.encode_chunks([dataclasses.replace(chunk, audio=np.zeros(3 * SR, np.float32))])


def test_encode_clip_on_a_real_video(spec, enc, tmp_path):
    from avarnet.data.synthetic import write_av_clip

    rng = np.random.default_rng(0)
    path = tmp_path / "clip.mp4"
    video = rng.integers(0, 256, (36, 48, 64, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal((1, 3 * SR))).astype(np.float32)
    write_av_clip(path, video, 12, audio, SR)
    feats = enc.encode_clip(path)
    assert feats.audio.shape == (3, 64) and feats.visual.shape == (3, 88)
    assert feats.has_audio and feats.info.duration_s == pytest.approx(3.0, abs=0.01)
    np.testing.assert_allclose(feats.bounds_s, [0, 1, 2, 3])
    ((a, v),) = enc.encode_chunks([decode_clip(path, spec.decode_options())])
    np.testing.assert_array_equal(feats.audio, a)
    np.testing.assert_array_equal(feats.visual, v)
    # Frames do not depend on how the clip is chunked (audio context does, at chunk edges).
    short = FeatureEncoders(
        dataclasses.replace(spec, chunk_segments=2), enc.audio_model, enc.visual_model
    )
    chunked = short.encode_clip(path)
    assert chunked.info.duration_s == feats.info.duration_s
    np.testing.assert_allclose(chunked.visual, v, atol=1e-5)
    np.testing.assert_allclose(chunked.bounds_s, feats.bounds_s)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg on PATH")
def test_features_read_by_decord_and_pyav_agree(spec, enc, tmp_path):
    """One clip written by ffmpeg, encoded twice: frames read by decord, and by PyAV (the
    fallback for files decord cannot read). The features agree segment by segment."""
    path = tmp_path / "clip.mp4"
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    cmd += ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=4"]
    cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=4"]
    subprocess.run(
        [*cmd, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)], check=True
    )
    by_decord = enc.encode_clip(path, decoder="decord")
    by_pyav = enc.encode_clip(path, decoder="pyav")
    assert (by_decord.info.decoder, by_pyav.info.decoder) == ("decord", "pyav")
    np.testing.assert_array_equal(by_decord.bounds_s, by_pyav.bounds_s)

    def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    visual = cosines(by_decord.visual, by_pyav.visual)
    audio = cosines(by_decord.audio, by_pyav.audio)
    print(f"decord vs PyAV features: visual cosine min {visual.min():.7f}, audio {audio.min():.7f}")
    assert visual.min() > 0.9999 and audio.min() > 0.9999
