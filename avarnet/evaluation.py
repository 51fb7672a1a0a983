"""Evaluate a :class:`~avarnet.predictor.Predictor` on a feature set, the way the field does.

- Clip classification: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix
  (for multi-label clips the primary label is the target and the arg-max the prediction).
- Anomaly localisation, on clips with frame-level ground truth:
  - ``segment_frames`` features (XD-Violence, 16 frames a segment): the XD-Violence
    frame-level protocol (scores repeated to frames, all videos pooled):
    ``xd_ap`` = trapezoidal area under the precision-recall curve (the number papers
    report) and ``xd_average_precision`` = scikit-learn's ``average_precision_score``.
  - ``segment_seconds`` features: the same two numbers at segment level
    (``segment_ap_auc``, ``segment_average_precision``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from avarnet import metrics as M
from avarnet.features.table import FeatureSet
from avarnet.predictor import Prediction, Predictor

__all__ = ["evaluate", "format_report"]


def evaluate(
    predictor: Predictor, fs: FeatureSet, *, out_dir: str | Path | None = None
) -> dict[str, Any]:
    """Metrics of ``predictor`` on ``fs``; with ``out_dir``, also writes the confusion
    matrix PNG there. Returns a JSON-serialisable dict."""
    if len(fs) == 0:
        raise ValueError("no clips to evaluate")
    unknown = sorted({name for ls in fs.labels for name in ls} - set(predictor.labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's classes {predictor.labels}")
    preds = predictor.predict(fs.audio, fs.visual, fs.has_audio)
    index = {name: i for i, name in enumerate(predictor.labels)}
    y_true = np.array([index[name] for name in fs.label])
    y_pred = np.array([int(p.probabilities.argmax()) for p in preds])
    cls = M.classification_metrics(y_true, y_pred, predictor.labels)
    result: dict[str, Any] = {
        "clips": len(fs),
        "accuracy": float(cls["accuracy"]),
        "macro_f1": float(cls["macro_f1"]),
        "per_class": cls["per_class"],
        "confusion": np.asarray(cls["confusion"]).tolist(),
        "labels": list(predictor.labels),
    }
    result.update(_anomaly_metrics(preds, fs))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        M.confusion_matrix_figure(
            np.asarray(cls["confusion"]), predictor.labels, out / "confusion_matrix.png"
        )
        result["confusion_matrix_png"] = str(out / "confusion_matrix.png")
    return result


def _anomaly_metrics(preds: list[Prediction], fs: FeatureSet) -> dict[str, float]:
    idx = np.flatnonzero(fs.gt_available)
    if len(idx) == 0:
        return {}
    scores = [preds[i].segment_scores for i in idx]
    frames_per_segment = fs.spec.segment_frames
    if frames_per_segment:
        gts = [
            M.frame_gt_from_intervals(
                fs.gt_intervals[i], len(preds[i].segment_scores), frames_per_segment
            )
            for i in idx
        ]
        if not np.concatenate(gts).any() or np.concatenate(gts).all():
            return {}
        ap = M.xd_frame_ap(scores, gts, frames_per_segment=frames_per_segment)
        return {
            "xd_ap": float(ap["ap_auc"]),
            "xd_average_precision": float(ap["average_precision"]),
        }
    gt = np.concatenate([fs.segment_gt[i] for i in idx]).astype(int)
    s = np.concatenate(scores)
    if gt.min() == gt.max():
        return {}  # AP is undefined with one class only
    ap = M.xd_frame_ap([s], [gt], frames_per_segment=1)
    return {
        "segment_ap_auc": float(ap["ap_auc"]),
        "segment_average_precision": float(ap["average_precision"]),
    }


def format_report(result: dict[str, Any]) -> str:
    """A plain-text metrics table."""
    lines = [
        f"clips {result['clips']}   accuracy {result['accuracy']:.4f}   macro-F1 {result['macro_f1']:.4f}"
    ]
    for key, name in (
        ("xd_ap", "XD-Violence frame AP (PR-AUC, trapezoidal)"),
        ("xd_average_precision", "XD-Violence frame AP (average_precision_score)"),
        ("segment_ap_auc", "segment anomaly AP (PR-AUC, trapezoidal)"),
        ("segment_average_precision", "segment anomaly AP (average_precision_score)"),
    ):
        if key in result:
            lines.append(f"{name}: {result[key]:.4f}")
    lines.append(f"{'class':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for row in result["per_class"]:
        lines.append(
            f"{row['label']:<16}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>10.3f}{row['support']:>9d}"
        )
    return "\n".join(lines)
