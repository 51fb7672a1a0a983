"""Metrics: clip classification (accuracy, macro-F1, per-class report, confusion matrix)
and anomaly localisation (average precision, the XD-Violence frame-level protocol).

Class predictions are integer class indices ``0..C-1`` into a list of class names.
The XD-Violence protocol follows the reference code (Roc-Ng/XDVioDet ``test.py`` and
``list/make_gt.py``; nwpu-zxr/VadCLIP ``make_gt_xd.py``): per-snippet scores repeated 16
times to frames, frame ground truth from the annotated intervals, all test videos
concatenated into one precision-recall curve.

The classification metrics are computed here with numpy, exactly as scikit-learn defines
them (tests/avarnet/test_metrics.py checks them against it): every Ray Train worker and
Tune trial computes them each epoch, and importing scikit-learn (1.2 s of CPU) in each of
those processes cost more than the metrics. The average precisions, computed once per
evaluation, use scikit-learn itself (imported when called).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "average_precision",
    "classification_metrics",
    "confusion_matrix",
    "confusion_matrix_figure",
    "frame_gt_from_intervals",
    "macro_f1",
    "per_class_report",
    "xd_frame_ap",
]


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of clips whose predicted class is the true one."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else 0.0


def _counts(
    y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label: true positives, predicted count (tp + fp) and true count (tp + fn)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    tp = np.array([np.sum((y_true == c) & (y_pred == c)) for c in labels], dtype=np.int64)
    predicted = np.array([np.sum(y_pred == c) for c in labels], dtype=np.int64)
    true = np.array([np.sum(y_true == c) for c in labels], dtype=np.int64)
    return tp, predicted, true


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 0 where ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _prf(tp, predicted, true) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # F1 as scikit-learn computes it: 2 tp / (2 tp + fp + fn) = 2 tp / (predicted + true).
    return _ratio(tp, predicted), _ratio(tp, true), _ratio(2 * tp, predicted + true)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``
    (scikit-learn's ``average="macro"``; an undefined F1 counts as 0)."""
    labels = np.union1d(np.asarray(y_true), np.asarray(y_pred))
    if not len(labels):
        return 0.0
    return float(np.mean(_prf(*_counts(y_true, y_pred, labels))[2]))


def per_class_report(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per class ``i`` (named ``labels[i]``): precision, recall, F1 and support
    (the number of true clips). Classes without true or predicted clips get 0, not NaN."""
    tp, predicted, true = _counts(y_true, y_pred, np.arange(len(labels)))
    p, r, f = _prf(tp, predicted, true)
    return [
        {
            "label": str(name),
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(true[i]),
        }
        for i, name in enumerate(labels)
    ]


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None
) -> np.ndarray:
    """``(C, C)`` int64 counts, rows = true class, columns = predicted class. With
    ``num_classes``, every class ``0..C-1`` has a row and a column, even if unseen;
    without, the classes are those present in ``y_true`` or ``y_pred``, sorted."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.arange(num_classes) if num_classes is not None else np.union1d(y_true, y_pred)
    index = {c: i for i, c in enumerate(labels.tolist())}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true.tolist(), y_pred.tolist()):
        if t in index and p in index:  # clips of classes outside `labels` are left out
            cm[index[t], index[p]] += 1
    return cm


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Binary average precision (scikit-learn's ``average_precision_score``: the step-wise
    sum ``sum_n (R_n - R_{n-1}) P_n``, no interpolation)."""
    from sklearn import metrics as skm

    return float(skm.average_precision_score(y_true, scores))


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """``accuracy``, ``macro_f1``, ``per_class`` (see :func:`per_class_report`) and
    ``confusion`` (``(C, C)`` over all ``class_names``) for class indices ``y_true``,
    ``y_pred`` of shape ``(N,)``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal (N,)")
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
        "per_class": per_class_report(y_true, y_pred, class_names),
        "confusion": confusion_matrix(y_true, y_pred, len(class_names)),
    }


def frame_gt_from_intervals(
    intervals: Sequence[Sequence[int]], n_segments: int, frames_per_segment: int = 16
) -> np.ndarray:
    """Frame-level ground truth of one video, the VadCLIP way (``make_gt_xd.py``).

    A zero vector of ``frames_per_segment * n_segments`` frames (as many frames as the
    features cover), then ``gt[s:e] = 1`` for every annotated ``[s, e)`` (end exclusive;
    intervals reaching past the covered frames are cut there). Returns ``int8``.
    """
    gt = np.zeros(frames_per_segment * n_segments, dtype=np.int8)
    for interval in intervals:
        s, e = (int(v) for v in interval)
        if s < 0 or e < s:
            raise ValueError(f"bad interval [{s}, {e}): need 0 <= start <= end")
        gt[s:e] = 1
    return gt


def xd_frame_ap(
    segment_scores: Sequence[np.ndarray],
    frame_gt: Sequence[np.ndarray],
    frames_per_segment: int = 16,
) -> dict[str, float]:
    """The XD-Violence frame-level AP over a test set (Roc-Ng/XDVioDet ``test.py``).

    Args:
        segment_scores: per video, ``(T_i,)`` anomaly scores, one per segment (snippet of
            ``frames_per_segment`` frames).
        frame_gt: per video, ``(frames_per_segment * T_i,)`` 0/1 frame labels
            (see :func:`frame_gt_from_intervals`), in the same video order.

    Each score is repeated ``frames_per_segment`` times (``np.repeat``), all videos are
    concatenated into one vector, and one precision-recall curve is drawn over all frames.

    Returns:
        ``ap_auc``: ``sklearn.metrics.auc(recall, precision)``, the trapezoidal area under
        that curve: the number XD-Violence papers report as "AP".
        ``average_precision``: ``sklearn.metrics.average_precision_score`` on the same
        frames (step-wise, usually slightly lower than ``ap_auc``).

    Raises ValueError when a video's ground truth is not ``frames_per_segment * T_i``
    frames long (naming the video's index), or when no frame is anomalous.
    """
    if len(segment_scores) != len(frame_gt):
        raise ValueError(
            f"{len(segment_scores)} videos of scores but {len(frame_gt)} of ground truth"
        )
    if not segment_scores:
        raise ValueError("no videos")
    scores, gts = [], []
    for i, (s, g) in enumerate(zip(segment_scores, frame_gt)):
        s, g = np.asarray(s, dtype=np.float64).reshape(-1), np.asarray(g).reshape(-1)
        if len(g) != frames_per_segment * len(s):
            raise ValueError(
                f"video {i}: {len(s)} segments x {frames_per_segment} frames = "
                f"{frames_per_segment * len(s)} frames, but its ground truth has {len(g)}"
            )
        scores.append(np.repeat(s, frames_per_segment))
        gts.append(g)
    score, gt = np.concatenate(scores), np.concatenate(gts).astype(np.int64)
    if not gt.any():
        raise ValueError("no anomalous frame in the ground truth: AP is undefined")
    from sklearn import metrics as skm

    precision, recall, _ = skm.precision_recall_curve(gt, score)
    return {
        "ap_auc": float(skm.auc(recall, precision)),
        "average_precision": float(skm.average_precision_score(gt, score)),
    }


def confusion_matrix_figure(
    cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike
) -> Path:
    """Write the confusion matrix ``cm (C, C)`` (rows true, columns predicted) as a PNG
    with counts in the cells. Uses matplotlib's Agg canvas directly (no global backend
    switch, safe in worker threads)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix {cm.shape} does not match {n} class names")
    size = max(4.0, 0.6 * n + 2.0)
    fig = Figure(figsize=(size, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), [str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticks(range(n), [str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{cm[i, j]:g}",
                ha="center",
                va="center",
                color="white" if cm[i, j] > threshold else "black",
                fontsize=8,
            )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
