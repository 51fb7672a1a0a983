"""The generated benchmark: real H.264 + AAC files, deterministic, and built so that only
the two modalities together identify the class."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from avarnet.data.decode import DecodeOptions, decode_clip
from avarnet.data.manifest import read_manifest
from avarnet.data.synthetic import (
    CLASSES,
    INFO_FILE,
    NORMAL_CLASS,
    SIGNATURES,
    generate_benchmark,
    render_clip,
    write_av_clip,
)

SR = 16000
PARAMS = dict(clips_per_class=4, seconds=2.5, fps=12, size=(96, 72), seed=0)
# One frame per segment: the decoder's own path, each segment a single frame.
FRAME_OPTS = DecodeOptions(segment_frames=1, frames_per_segment=1, image_size=32)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    calls = []
    rows = generate_benchmark(out, **PARAMS, progress=lambda d, t: calls.append((d, t)))
    info = json.loads((out / INFO_FILE).read_text())
    return out, rows, info, calls


def test_signatures_pair_up_so_only_both_modalities_identify_the_class():
    assert CLASSES[6] == NORMAL_CLASS and len(CLASSES) == 10
    assert len(set(SIGNATURES.values())) == 10
    for modality in (0, 1):
        counts = Counter(sig[modality] for sig in SIGNATURES.values())
        assert sorted(counts) == [0, 1, 2, 3, 4] and set(counts.values()) == {2}
    for a in CLASSES:
        for b in CLASSES:
            if a != b and SIGNATURES[a][0] == SIGNATURES[b][0]:
                assert SIGNATURES[a][1] != SIGNATURES[b][1]


def test_manifest_rows_and_event_intervals(bench):
    out, rows, info, calls = bench
    assert len(rows) == 40 and calls[-1] == (40, 40) and len(calls) == 40
    assert read_manifest(out / "manifest.csv").rows == rows
    n_frames = 30  # 2.5 s at 12 fps
    for row in rows:
        assert Path(row["path"]) == out / f"{row['video_id']}.mp4"
        assert row["video_id"].startswith(row["label"] + "/")
        assert row["labels"] == [row["label"]] and row["gt_available"] is True
        clip = info["clips"][row["video_id"]]
        start, end = clip["event_frames"]
        assert 0 <= start < end <= n_frames == clip["n_frames"]
        assert 0.4 * n_frames - 1 <= end - start <= 0.8 * n_frames + 1
        assert row["gt_intervals"] == ([] if row["label"] == NORMAL_CLASS else [[start, end]])
    split = Counter((r["label"], r["split"]) for r in rows)
    assert all(split[(c, s)] >= 1 for c in CLASSES for s in ("train", "val", "test"))
    # 30 % of 40 clips degraded, the three kinds in turn.
    kinds = Counter(c["degradation"] for c in info["clips"].values())
    assert kinds == {None: 28, "dark": 4, "occluded": 4, "noisy": 4}


def test_files_are_h264_and_aac(bench):
    out, rows, _, _ = bench
    with av.open(rows[0]["path"]) as container:
        (video,) = container.streams.video
        (audio,) = container.streams.audio
        assert video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert (video.codec_context.width, video.codec_context.height) == (96, 72)
        assert video.frames == 30 and float(video.average_rate) == pytest.approx(12)
        assert audio.codec_context.name == "aac"
        assert audio.codec_context.sample_rate == SR and audio.codec_context.channels == 1


def test_same_seed_same_files_other_seed_other_content(bench, tmp_path):
    out, rows, info, _ = bench
    again = generate_benchmark(tmp_path / "again", **PARAMS)
    assert [{**r, "path": None} for r in again] == [{**r, "path": None} for r in rows]
    assert json.loads((tmp_path / "again" / INFO_FILE).read_text()) == info
    for a, b in zip(rows, again):
        assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes(), a["video_id"]
    # ... and so decode identically (through the project's decoder).
    first, second = (
        decode_clip(rows[5]["path"], FRAME_OPTS),
        decode_clip(again[5]["path"], FRAME_OPTS),
    )
    np.testing.assert_array_equal(first.frames, second.frames)
    np.testing.assert_array_equal(first.audio, second.audio)
    other = render_clip(rows[5]["label"], seed=1, index=1, seconds=2.5, size=(96, 72))
    same_seed = render_clip(rows[5]["label"], seed=0, index=1, seconds=2.5, size=(96, 72))
    assert not np.array_equal(other.video, same_seed.video)


def test_no_audio_clips_and_other_audio_formats(tmp_path):
    rows = generate_benchmark(
        tmp_path,
        clips_per_class=1,
        seconds=1.0,
        size=(64, 48),
        audio_rate=48000,
        audio_channels=2,
        degrade_fraction=0.0,
        no_audio_fraction=0.2,
    )
    info = json.loads((tmp_path / INFO_FILE).read_text())
    silent = [r for r in rows if not info["clips"][r["video_id"]]["has_audio"]]
    assert len(silent) == 2
    for row in rows:
        with av.open(row["path"]) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            if row in silent:
                assert not container.streams.audio
            else:
                ctx = container.streams.audio[0].codec_context
                assert (ctx.name, ctx.sample_rate, ctx.channels) == ("aac", 48000, 2)


def test_degradations_touch_one_modality_each():
    kw = dict(seed=3, index=2, seconds=2.0, size=(64, 48))
    clean = render_clip("Explosion", **kw)
    dark = render_clip("Explosion", degradation="dark", **kw)
    occluded = render_clip("Explosion", degradation="occluded", **kw)
    noisy = render_clip("Explosion", degradation="noisy", **kw)
    assert dark.event_frames == clean.event_frames
    ratio = dark.video.mean() / clean.video.mean()
    assert 0.18 < ratio < 0.32
    np.testing.assert_array_equal(dark.audio, clean.audio)
    # A static box: pixels that never change over the clip cover a big part of the frame.
    static = (occluded.video == occluded.video[:1]).all(axis=(0, 3))
    assert 0.25 < static.mean() < 0.6
    np.testing.assert_array_equal(noisy.video, clean.video)
    extra = noisy.audio - clean.audio
    assert np.sqrt(np.mean(extra**2)) > 0.08


def _band_log_power(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    return np.log10(
        [
            power[(freqs >= lo) & (freqs < hi)].mean() + 1e-10
            for lo, hi in zip(edges[:-1], edges[1:])
        ]
    )


def _clip_statistics(path: str, clip: dict) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm visual and audio statistics of the event against the rest of the clip:
    the mean colour difference (3,) and the log power ratio in 12 bands, 50 Hz - 7 kHz."""
    chunk = decode_clip(path, FRAME_OPTS)
    colour = chunk.frames[:, 0].reshape(chunk.n_segments, -1, 3).mean(axis=1)
    start, end = clip["event_frames"]
    inside = np.zeros(len(colour), bool)
    inside[start:end] = True
    visual = colour[inside].mean(0) - colour[~inside].mean(0)
    a0, a1 = (int(round(s * SR)) for s in clip["event_seconds"])
    edges = np.geomspace(50, 7000, 13)
    rest = np.concatenate([chunk.audio[:a0], chunk.audio[a1:]])
    audio = _band_log_power(chunk.audio[a0:a1], edges) - _band_log_power(rest, edges)
    return visual / np.linalg.norm(visual), audio / np.linalg.norm(audio)


def _leave_one_out_nearest_centroid(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    pred = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        centroids = np.stack([x[keep & (y == c)].mean(0) for c in range(len(CLASSES))])
        pred.append(int(np.argmin(((centroids - x[i]) ** 2).sum(1))))
    return np.array(pred)


def test_one_modality_confuses_the_shared_pairs_fusion_separates_all(bench):
    """Nearest-centroid on simple statistics: visual alone confuses exactly the class pairs
    that share a visual signature (about 50 %), audio alone likewise, both give ~100 %."""
    _, rows, info, _ = bench
    stats = [_clip_statistics(r["path"], info["clips"][r["video_id"]]) for r in rows]
    visual, audio = (np.stack(s) for s in zip(*stats))
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    sig = np.array([SIGNATURES[c] for c in CLASSES])  # (10, 2) class -> (visual, audio)
    for modality, x in ((0, visual), (1, audio)):
        pred = _leave_one_out_nearest_centroid(x, y)
        # Every mistake stays inside the pair sharing this modality's signature ...
        np.testing.assert_array_equal(sig[pred, modality], sig[y, modality])
        # ... and inside the pair it is a coin toss.
        assert (pred == y).mean() <= 0.75
    fused = _leave_one_out_nearest_centroid(np.hstack([visual, audio]), y)
    assert (fused == y).mean() >= 0.95


def test_write_av_clip_special_clips(tmp_path):
    video = np.zeros((20, 48, 64, 3), np.uint8)
    video[:, :, :, 1] = (np.arange(20) * 10)[:, None, None]
    # Variable frame rate: frame i shown from pts[i] / 10 s; the last frame lasts 0.1 s.
    pts = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 19, 24, 29, 34, 35, 36, 37, 38, 39]
    vfr = write_av_clip(tmp_path / "vfr.mp4", video, 10, pts=pts)
    with av.open(str(vfr)) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
        assert not container.streams.audio
    np.testing.assert_allclose(times, np.array(pts) / 10, atol=1e-3)
    # Shorter than one second, 44.1 kHz stereo (float input as (C, S)).
    t = np.arange(int(0.4 * 44100)) / 44100
    tone = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    short = write_av_clip(tmp_path / "short.mp4", video[:4], 10, 0.3 * tone, 44100)
    with av.open(str(short)) as container:
        assert container.streams.video[0].frames == 4
        ctx = container.streams.audio[0].codec_context
        assert (ctx.sample_rate, ctx.channels) == (44100, 2)
        decoded = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    assert decoded.shape[0] == 2 and abs(decoded.shape[1] - len(t)) <= 2048
    with pytest.raises(ValueError, match="even"):
        write_av_clip(tmp_path / "odd.mp4", np.zeros((2, 45, 64, 3), np.uint8), 10)
    with pytest.raises(ValueError, match="audio_rate"):
        write_av_clip(tmp_path / "x.mp4", video, 10, tone)
