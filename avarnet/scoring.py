"""Turning per-segment anomaly scores into what an analyst opens: events, frame scores, CSV.

A clip's scores come as the scoring service's ``segments`` (``ScoreResponse`` in
``serve/app.py``, and the batch job's per-clip outputs): dicts with ``start_s``, ``end_s``
(exclusive), ``anomaly_score`` (``1 - p(normal)``; for a multi-label model the largest
non-normal probability; in [0, 1]) and ``top_class``, in time
order. From them:

- :func:`find_events`: the stretches of a clip whose score stays at or over a threshold;
- :func:`frame_scores`: one score per video frame (what XD-Violence style evaluation
  scripts read);
- :func:`write_events_csv`: the events as one CSV table.

Pure numpy and the standard library; nothing happens at import time.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EVENT_CSV_COLUMNS", "Event", "find_events", "frame_scores", "write_events_csv"]

#: The header of :func:`write_events_csv`.
EVENT_CSV_COLUMNS = (
    "video_id",
    "path",
    "start_s",
    "end_s",
    "duration_s",
    "peak_score",
    "peak_s",
    "top_class",
    "n_segments",
)

# A frame time this close below a segment start (float rounding of i / fps against the
# service's bounds) counts as inside that segment.
_TIME_EPS_S = 1e-6


@dataclass(frozen=True)
class Event:
    """One stretch of a clip whose segments score at or over the threshold.

    Attributes:
        video_id: the clip's id.
        path: the clip's file.
        start_s: the start of the event's first segment, seconds from the clip's start.
        end_s: the end (exclusive) of its last segment.
        peak_score: the highest anomaly score in the event.
        peak_s: the start of the segment with that score (the first one on a tie).
        top_class: the ``top_class`` of that segment.
        n_segments: how many segments over the threshold the event holds (segments under
            it inside a merged gap are not counted).
    """

    video_id: str
    path: str
    start_s: float
    end_s: float
    peak_score: float
    peak_s: float
    top_class: str
    n_segments: int

    @property
    def duration_s(self) -> float:
        """``end_s - start_s``."""
        return self.end_s - self.start_s


def _check_order(segments: Sequence[dict[str, Any]]) -> None:
    """Raise ValueError unless every segment has ``end_s >= start_s`` and starts are sorted."""
    prev = -math.inf
    for i, seg in enumerate(segments):
        start, end = float(seg["start_s"]), float(seg["end_s"])
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise ValueError(f"segments[{i}]: bad bounds [{start}, {end})")
        if start < prev:
            raise ValueError(f"segments[{i}] starts at {start} s, before the one before it")
        prev = start


def find_events(
    video_id: str,
    path: str,
    segments: Sequence[dict[str, Any]],
    threshold: float = 0.5,
    min_gap_s: float = 0.0,
) -> list[Event]:
    """The events of one clip: runs of consecutive segments scoring ``>= threshold``.

    Two runs whose gap (the later run's ``start_s`` minus the earlier run's ``end_s``) is
    shorter than ``min_gap_s`` become one event spanning both; with the default 0 no runs
    merge. Consecutive means next to each other in ``segments``.

    Args:
        video_id: the clip's id, copied into each event.
        path: the clip's file, copied into each event.
        segments: the clip's segments in time order (``start_s``, ``end_s``,
            ``anomaly_score``, ``top_class``).
        threshold: the score from which a segment counts as anomalous, in [0, 1].
        min_gap_s: runs closer than this (seconds) are merged; ``>= 0``.

    Returns:
        The events in time order (empty when no segment reaches the threshold).

    Raises:
        ValueError: ``threshold`` outside [0, 1], ``min_gap_s`` negative or NaN, segments
            out of order or with ``end_s < start_s``.
    """
    threshold = float(threshold)
    min_gap_s = float(min_gap_s)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if not min_gap_s >= 0.0:
        raise ValueError(f"min_gap_s must be >= 0, got {min_gap_s}")
    _check_order(segments)
    runs = _merge_runs(segments, _over_runs(segments, threshold), min_gap_s)
    return [_event(video_id, path, segments, idx) for idx in runs]


def _over_runs(segments: Sequence[dict[str, Any]], threshold: float) -> list[list[int]]:
    """Runs of consecutive segments scoring ``>= threshold``: lists of indices."""
    runs: list[list[int]] = []
    previous_over = False
    for i, seg in enumerate(segments):
        over = float(seg["anomaly_score"]) >= threshold
        if over and previous_over:
            runs[-1].append(i)
        elif over:
            runs.append([i])
        previous_over = over
    return runs


def _merge_runs(
    segments: Sequence[dict[str, Any]], runs: list[list[int]], min_gap_s: float
) -> list[list[int]]:
    """``runs`` with each run joined to the one before when the gap is under ``min_gap_s``."""
    merged: list[list[int]] = []
    for run in runs:
        if merged:
            gap = float(segments[run[0]]["start_s"]) - float(segments[merged[-1][-1]]["end_s"])
            if gap < min_gap_s:
                merged[-1].extend(run)
                continue
        merged.append(list(run))
    return merged


def _event(video_id: str, path: str, segments: Sequence[dict[str, Any]], idx: list[int]) -> Event:
    """The event of the segments ``idx`` (one merged run)."""
    scores = [float(segments[i]["anomaly_score"]) for i in idx]
    peak = idx[int(np.argmax(scores))]  # the first maximum
    return Event(
        video_id=str(video_id),
        path=str(path),
        start_s=float(segments[idx[0]]["start_s"]),
        end_s=float(segments[idx[-1]]["end_s"]),
        peak_score=max(scores),
        peak_s=float(segments[peak]["start_s"]),
        top_class=str(segments[peak]["top_class"]),
        n_segments=len(idx),
    )


def frame_scores(segments: Sequence[dict[str, Any]], n_frames: int, fps: float) -> np.ndarray:
    """One anomaly score per frame: frame ``i`` (at ``i / fps`` s) gets the score of the
    segment whose ``[start_s, end_s)`` holds it.

    Frames before the first segment get the first segment's score; frames after the last
    segment's end the last one's; a frame in a gap between two segments keeps the score of
    the segment before the gap. A frame time within 1 µs below a segment's start counts as
    in that segment (float rounding). Vectorised: a 2-hour clip at 30 fps takes
    milliseconds.

    Args:
        segments: the clip's segments in time order (``start_s``, ``end_s``,
            ``anomaly_score``).
        n_frames: the number of frames of the clip, ``>= 0``.
        fps: frames per second, ``> 0`` (fractional rates such as 29.97 are fine).

    Returns:
        ``(n_frames,)`` float32.

    Raises:
        ValueError: bad ``n_frames`` or ``fps``, no segments for ``n_frames > 0``, segments
            out of order.
    """
    if isinstance(n_frames, bool) or int(n_frames) != n_frames or n_frames < 0:
        raise ValueError(f"n_frames must be an integer >= 0, got {n_frames}")
    fps = float(fps)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be > 0, got {fps}")
    n_frames = int(n_frames)
    if n_frames == 0:
        return np.zeros(0, np.float32)
    if len(segments) == 0:
        raise ValueError("segments is empty: no score to give the frames")
    _check_order(segments)
    starts = np.array([float(s["start_s"]) for s in segments], np.float64)
    scores = np.array([float(s["anomaly_score"]) for s in segments], np.float32)
    times = np.arange(n_frames, dtype=np.float64) / fps
    # The last segment starting at or before each frame; before the first: the first.
    idx = np.searchsorted(starts, times + _TIME_EPS_S, side="right") - 1
    return scores[np.clip(idx, 0, len(segments) - 1)]


def _fmt(x: float) -> str:
    return f"{float(x):.3f}"


def write_events_csv(events: Sequence[Event], path: str | os.PathLike) -> Path:
    """Write ``events`` as CSV (header :data:`EVENT_CSV_COLUMNS`), atomically.

    Seconds and scores have 3 decimals; ``duration_s`` is ``end_s - start_s``. The file is
    written beside the target under a temporary name and renamed over it, so a reader never
    sees half a file. Read it back with :class:`csv.DictReader`.

    Returns:
        The CSV's path.
    """
    out = Path(os.path.abspath(os.fspath(path)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(EVENT_CSV_COLUMNS)
            for e in events:
                writer.writerow(
                    [
                        e.video_id,
                        e.path,
                        _fmt(e.start_s),
                        _fmt(e.end_s),
                        _fmt(e.end_s - e.start_s),
                        _fmt(e.peak_score),
                        _fmt(e.peak_s),
                        e.top_class,
                        int(e.n_segments),
                    ]
                )
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return out
