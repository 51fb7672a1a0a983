"""avarnet.scoring: events from segment scores, one score per frame, the events CSV."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from avarnet.scoring import EVENT_CSV_COLUMNS, Event, find_events, frame_scores, write_events_csv

ROOT = Path(__file__).resolve().parents[2]


def segs(scores, length=1.0, start=0.0, classes=None):
    """Back-to-back segments of ``length`` seconds with these anomaly scores."""
    return [
        {
            "start_s": start + i * length,
            "end_s": start + (i + 1) * length,
            "anomaly_score": float(s),
            "top_class": classes[i] if classes else ("Fighting" if s >= 0.5 else "Normal"),
        }
        for i, s in enumerate(scores)
    ]


# ----------------------------------------------------------------------------- events


def test_single_run():
    classes = ["Normal", "Fighting", "Shooting", "Fighting", "Normal"]
    (e,) = find_events("v1", "/d/v1.mp4", segs([0.1, 0.6, 0.9, 0.7, 0.2], classes=classes))
    assert e == Event("v1", "/d/v1.mp4", 1.0, 4.0, 0.9, 2.0, "Shooting", 3)
    assert e.duration_s == 3.0


def test_two_runs():
    events = find_events("v", "p", segs([0.8, 0.2, 0.2, 0.6, 0.7, 0.1]))
    assert [(e.start_s, e.end_s, e.n_segments) for e in events] == [(0, 1, 1), (3, 5, 2)]
    assert [e.peak_score for e in events] == [0.8, 0.7]
    assert [e.peak_s for e in events] == [0.0, 4.0]


def test_peak_tie_takes_the_first_segment():
    (e,) = find_events("v", "p", segs([0.7, 0.7], classes=["A", "B"]))
    assert (e.peak_s, e.top_class) == (0.0, "A")


def test_merge_across_a_short_gap():
    # Runs [0, 2) and [3, 4): gap 1 s < 1.5 s -> one event; the 0.1 segment is not counted.
    events = find_events("v", "p", segs([0.9, 0.6, 0.1, 0.8]), min_gap_s=1.5)
    assert [(e.start_s, e.end_s, e.n_segments, e.peak_score) for e in events] == [
        (0.0, 4.0, 3, 0.9)
    ]
    # Three runs chain: each gap is short.
    events = find_events("v", "p", segs([0.9, 0.1, 0.8, 0.1, 0.7]), min_gap_s=1.5)
    assert [(e.start_s, e.end_s, e.n_segments) for e in events] == [(0.0, 5.0, 3)]


def test_no_merge_across_a_long_gap():
    scores = [0.9, 0.1, 0.1, 0.8]  # gap 2 s
    assert len(find_events("v", "p", segs(scores), min_gap_s=1.5)) == 2
    assert len(find_events("v", "p", segs(scores), min_gap_s=2.0)) == 2  # not shorter
    assert len(find_events("v", "p", segs(scores), min_gap_s=2.01)) == 1
    assert len(find_events("v", "p", segs(scores))) == 2  # the default merges nothing


def test_merge_uses_the_time_gap_not_the_segment_count():
    # Half-second segments: two below-threshold segments are a 1 s gap.
    events = find_events("v", "p", segs([0.9, 0.1, 0.1, 0.9], length=0.5), min_gap_s=1.2)
    assert [(e.start_s, e.end_s) for e in events] == [(0.0, 2.0)]


def test_threshold_edge_is_included():
    events = find_events("v", "p", segs([0.49999, 0.5, 0.5, 0.3]), threshold=0.5)
    assert [(e.start_s, e.end_s, e.peak_score) for e in events] == [(1.0, 3.0, 0.5)]
    assert len(find_events("v", "p", segs([0.0, 0.2]), threshold=0.0)) == 1
    assert len(find_events("v", "p", segs([1.0, 0.2]), threshold=1.0)) == 1


def test_nothing_over_the_threshold():
    assert find_events("v", "p", segs([0.1, 0.2, 0.49])) == []
    assert find_events("v", "p", []) == []


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"min_gap_s": -1.0}, "min_gap_s"),
        ({"min_gap_s": float("nan")}, "min_gap_s"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        find_events("v", "p", segs([0.9]), **kwargs)


def test_segments_out_of_order_are_refused():
    with pytest.raises(ValueError, match="before"):
        find_events("v", "p", list(reversed(segs([0.9, 0.8]))))
    with pytest.raises(ValueError, match="bounds"):
        find_events("v", "p", [{"start_s": 2, "end_s": 1, "anomaly_score": 0.9, "top_class": "A"}])


# ----------------------------------------------------------------------------- frame scores


def test_frame_scores_shape_and_dtype():
    out = frame_scores(segs([0.1, 0.9]), 50, 25)
    assert out.shape == (50,) and out.dtype == np.float32
    assert frame_scores(segs([0.1]), 0, 25).shape == (0,)


def test_frame_scores_at_segment_boundaries():
    # 25 fps, 1 s segments: frames 0..24 -> segment 0, frame 25 (t = 1.0) -> segment 1.
    out = frame_scores(segs([0.1, 0.5, 0.9]), 75, 25)
    np.testing.assert_array_equal(out[:25], np.float32(0.1))
    np.testing.assert_array_equal(out[25:50], np.float32(0.5))
    np.testing.assert_array_equal(out[50:], np.float32(0.9))


def test_frames_past_the_last_segment_and_before_the_first():
    out = frame_scores(segs([0.2, 0.8], start=1.0), 100, 25)  # segments cover [1, 3) s
    np.testing.assert_array_equal(out[:25], np.float32(0.2))  # before the first
    np.testing.assert_array_equal(out[75:], np.float32(0.8))  # past the last


def test_frame_scores_at_29_97_fps():
    # Segments of 16 frames at 30000/1001 fps, bounds as the service computes them.
    fps = 29.97
    n_seg = 40
    bounds = [16 * k / fps for k in range(n_seg + 1)]
    s = [
        {"start_s": bounds[k], "end_s": bounds[k + 1], "anomaly_score": k / n_seg, "top_class": "A"}
        for k in range(n_seg)
    ]
    out = frame_scores(s, 16 * n_seg + 10, fps)
    expected = np.minimum(np.arange(16 * n_seg + 10) // 16, n_seg - 1) / n_seg
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    # Bounds off by float rounding (k * (16 / fps)) still put each frame in its segment.
    step = 16 / fps
    s2 = [dict(x, start_s=k * step, end_s=(k + 1) * step) for k, x in enumerate(s)]
    np.testing.assert_array_equal(frame_scores(s2, 16 * n_seg + 10, fps), out)


def test_frame_scores_for_a_two_hour_clip_is_fast():
    s = segs(np.linspace(0, 1, 7200 * 2), length=0.5)  # 2 h of half-second segments
    t0 = time.perf_counter()
    out = frame_scores(s, 2 * 3600 * 30, 30.0)
    assert time.perf_counter() - t0 < 2.0
    assert out.shape == (216_000,)
    assert out[0] == 0 and out[-1] == 1


def test_frame_scores_bad_arguments():
    with pytest.raises(ValueError, match="fps"):
        frame_scores(segs([0.1]), 10, 0)
    with pytest.raises(ValueError, match="n_frames"):
        frame_scores(segs([0.1]), -1, 25)
    with pytest.raises(ValueError, match="n_frames"):
        frame_scores(segs([0.1]), 2.5, 25)
    with pytest.raises(ValueError, match="empty"):
        frame_scores([], 10, 25)


# ----------------------------------------------------------------------------- CSV


def test_events_csv_round_trip(tmp_path):
    events = [
        Event("v1", "/data/a b/v1.mp4", 1.0, 4.25, 0.91234, 2.0, "Fighting", 3),
        Event("v,2", 'odd "name".mp4', 0.0, 1.0 / 3.0, 0.5, 0.0, "Riot, urban", 1),
    ]
    out = write_events_csv(events, tmp_path / "sub" / "events.csv")
    assert out == tmp_path / "sub" / "events.csv"
    assert sorted(p.name for p in out.parent.iterdir()) == ["events.csv"]  # no tmp left
    with open(out, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == EVENT_CSV_COLUMNS
        rows = list(reader)
    assert rows[0] == {
        "video_id": "v1",
        "path": "/data/a b/v1.mp4",
        "start_s": "1.000",
        "end_s": "4.250",
        "duration_s": "3.250",
        "peak_score": "0.912",
        "peak_s": "2.000",
        "top_class": "Fighting",
        "n_segments": "3",
    }
    back = [
        Event(
            r["video_id"],
            r["path"],
            float(r["start_s"]),
            float(r["end_s"]),
            float(r["peak_score"]),
            float(r["peak_s"]),
            r["top_class"],
            int(r["n_segments"]),
        )
        for r in rows
    ]
    for a, b in zip(events, back):
        assert (a.video_id, a.path, a.top_class, a.n_segments) == (
            b.video_id,
            b.path,
            b.top_class,
            b.n_segments,
        )
        for k in ("start_s", "end_s", "peak_score", "peak_s"):
            assert getattr(b, k) == pytest.approx(getattr(a, k), abs=5e-4)
    # Rewriting replaces the file; no events: the header alone.
    write_events_csv([], out)
    assert out.read_text().strip() == ",".join(EVENT_CSV_COLUMNS)


def test_scoring_is_pure_numpy_and_stdlib():
    """Importing avarnet.scoring pulls in neither torch nor ray, mlflow, fastapi."""
    code = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('ray', 'mlflow', 'fastapi', 'torch', 'sklearn', 'pandas'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import avarnet.scoring
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
