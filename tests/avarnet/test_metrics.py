"""Metrics against scikit-learn, and the XD-Violence frame-level protocol on a
hand-built example checked against the reference computation (XDVioDet test.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from avarnet import metrics as M

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, 200))
    return y_true, y_pred


def test_classification_metrics_match_sklearn(predictions):
    y_true, y_pred = predictions
    assert M.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert M.macro_f1(y_true, y_pred) == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro")
    )
    np.testing.assert_array_equal(
        M.confusion_matrix(y_true, y_pred), skm.confusion_matrix(y_true, y_pred)
    )
    names = ["a", "b", "c", "d", "e"]
    report = M.per_class_report(y_true, y_pred, names)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred)
    assert [row["label"] for row in report] == names
    np.testing.assert_allclose([row["precision"] for row in report], p)
    np.testing.assert_allclose([row["recall"] for row in report], r)
    np.testing.assert_allclose([row["f1"] for row in report], f)
    assert [row["support"] for row in report] == s.tolist()
    assert all(isinstance(row["support"], int) for row in report)


@pytest.mark.parametrize(
    "y_true, y_pred",
    [
        ([0, 0, 1, 1, 2], [0, 1, 1, 1, 1]),  # a class never predicted
        ([0, 0, 1, 1], [0, 3, 1, 3]),  # a class only predicted
        ([2, 2, 2], [2, 2, 2]),  # one class
        ([4, 1, 1, 0], [0, 0, 0, 0]),  # one class predicted for all
    ],
)
def test_classification_metrics_match_sklearn_with_absent_classes(y_true, y_pred):
    y_true, y_pred = np.array(y_true), np.array(y_pred)
    assert M.accuracy(y_true, y_pred) == skm.accuracy_score(y_true, y_pred)
    assert M.macro_f1(y_true, y_pred) == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12
    )
    np.testing.assert_array_equal(
        M.confusion_matrix(y_true, y_pred), skm.confusion_matrix(y_true, y_pred)
    )
    # With the class count: every class has a row; a class index past it is left out.
    np.testing.assert_array_equal(
        M.confusion_matrix(y_true, y_pred, 3),
        skm.confusion_matrix(y_true, y_pred, labels=np.arange(3)),
    )
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(5), zero_division=0
    )
    report = M.per_class_report(y_true, y_pred, list("abcde"))
    np.testing.assert_allclose([row["precision"] for row in report], p, atol=1e-12)
    np.testing.assert_allclose([row["recall"] for row in report], r, atol=1e-12)
    np.testing.assert_allclose([row["f1"] for row in report], f, atol=1e-12)
    assert [row["support"] for row in report] == s.tolist()


def test_training_metrics_need_no_sklearn():
    """What every training worker imports each run (avarnet.training and its metrics)
    pulls in no scikit-learn: 1.2 s of CPU per process it would cost."""
    code = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('sklearn', 'scipy'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import numpy as np
import avarnet.training
from avarnet.metrics import classification_metrics
m = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), ['a', 'b'])
print(round(m['macro_f1'], 4))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0.6667"


def test_classification_metrics_cover_every_class():
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    m = M.classification_metrics(y_true, y_pred, ["normal", "fight", "riot"])
    assert set(m) == {"accuracy", "macro_f1", "per_class", "confusion"}
    assert m["accuracy"] == 0.75
    np.testing.assert_array_equal(m["confusion"], [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    assert m["per_class"][2] == {
        "label": "riot",
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }
    with pytest.raises(ValueError, match="must be equal"):
        M.classification_metrics(y_true, y_pred[:3], ["a", "b"])


def test_average_precision_matches_sklearn():
    rng = np.random.default_rng(1)
    y, s = rng.integers(0, 2, 300), rng.random(300)
    assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s))


def test_frame_gt_from_intervals():
    gt = M.frame_gt_from_intervals([[5, 20], [40, 60]], n_segments=3)
    expected = np.zeros(48, dtype=np.int8)
    expected[5:20] = 1  # end exclusive
    expected[40:48] = 1  # cut at the 3 x 16 covered frames
    np.testing.assert_array_equal(gt, expected)
    assert gt.dtype == np.int8
    np.testing.assert_array_equal(M.frame_gt_from_intervals([], 2), np.zeros(32))
    np.testing.assert_array_equal(M.frame_gt_from_intervals([[1, 3]], 2, 2), [0, 1, 1, 0])
    with pytest.raises(ValueError, match="bad interval"):
        M.frame_gt_from_intervals([[7, 3]], 2)


def reference_xd_ap(segment_scores, gt):
    """Roc-Ng/XDVioDet test.py, written out: concatenate per-video snippet predictions,
    np.repeat 16 times, precision_recall_curve, then auc(recall, precision)."""
    pred = np.zeros(0)
    for scores in segment_scores:
        pred = np.concatenate([pred, scores])
    pred = np.repeat(np.array(list(pred)), 16)
    precision, recall, th = skm.precision_recall_curve(list(gt), pred)
    return skm.auc(recall, precision)


def test_xd_frame_ap_on_a_hand_built_example():
    # Video 0: 3 snippets (48 frames), violent frames [5, 20) and [40, 60) (cut at 48).
    # Video 1: normal, 2 snippets (32 frames).
    scores = [np.array([0.9, 0.2, 0.7]), np.array([0.1, 0.3])]
    gt0 = np.array([0] * 5 + [1] * 15 + [0] * 20 + [1] * 8)
    gt1 = np.zeros(32, dtype=int)
    gts = [M.frame_gt_from_intervals([[5, 20], [40, 60]], 3), M.frame_gt_from_intervals([], 2)]
    np.testing.assert_array_equal(gts[0], gt0)
    np.testing.assert_array_equal(gts[1], gt1)
    result = M.xd_frame_ap(scores, gts)
    # By hand: 23 violent frames. Thresholds 0.9, 0.7, 0.3, 0.2, 0.1 give (TP, FP) =
    # (11, 5), (19, 13), (19, 29), (23, 41), (23, 57).
    trapezoids = (1 + 11 / 16) / 2 * 11 / 23 + (11 / 16 + 19 / 32) / 2 * 8 / 23
    trapezoids += (19 / 48 + 23 / 64) / 2 * 4 / 23
    steps = 11 / 23 * 11 / 16 + 8 / 23 * 19 / 32 + 4 / 23 * 23 / 64
    assert result["ap_auc"] == pytest.approx(trapezoids)
    assert result["average_precision"] == pytest.approx(steps)
    assert result["ap_auc"] == pytest.approx(reference_xd_ap(scores, np.concatenate([gt0, gt1])))


def test_xd_frame_ap_matches_the_reference_on_random_videos():
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 30, 12)
    scores = [rng.random(n) for n in lengths]
    gts = []
    for i, n in enumerate(lengths):
        start = int(rng.integers(0, 16 * n))
        intervals = [[start, start + int(rng.integers(1, 60))]] if i % 2 == 0 else []
        gts.append(M.frame_gt_from_intervals(intervals, n))
    gt = np.concatenate(gts)
    result = M.xd_frame_ap(scores, gts)
    assert result["ap_auc"] == pytest.approx(reference_xd_ap(scores, gt))
    expected_ap = skm.average_precision_score(gt, np.repeat(np.concatenate(scores), 16))
    assert result["average_precision"] == pytest.approx(expected_ap)


def test_xd_frame_ap_length_mismatch_names_the_video():
    scores = [np.array([0.5, 0.2]), np.array([0.1, 0.3, 0.8])]
    gts = [np.r_[np.ones(16), np.zeros(16)], np.zeros(47)]
    with pytest.raises(ValueError, match="video 1: 3 segments .* ground truth has 47"):
        M.xd_frame_ap(scores, gts)
    with pytest.raises(ValueError, match="no anomalous frame"):
        M.xd_frame_ap(scores[:1], [np.zeros(32)])
    with pytest.raises(ValueError, match="2 videos of scores but 1"):
        M.xd_frame_ap(scores, gts[:1])


def test_xd_frame_ap_at_segment_level():
    """frames_per_segment=1 is plain pooled segment-level AP."""
    s, g = np.array([0.9, 0.1, 0.8, 0.3]), np.array([1, 0, 0, 1])
    precision, recall, _ = skm.precision_recall_curve(g, s)
    assert M.xd_frame_ap([s], [g], frames_per_segment=1)["ap_auc"] == pytest.approx(
        skm.auc(recall, precision)
    )


def test_confusion_matrix_figure(tmp_path):
    path = M.confusion_matrix_figure(
        np.array([[3, 1], [0, 4]]), ["Normal", "Crash"], tmp_path / "cm.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="does not match"):
        M.confusion_matrix_figure(np.eye(3), ["a", "b"], tmp_path / "bad.png")


def test_importing_metrics_does_not_import_matplotlib():
    code = "import sys, avarnet.metrics; assert 'matplotlib' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr
