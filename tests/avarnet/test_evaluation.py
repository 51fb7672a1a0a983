"""avarnet.evaluation: clip metrics and anomaly AP of a Predictor on a FeatureSet.

Most tests use a real Predictor over a tiny stand-in model whose prediction is written in
the features (segment logits = 10 x the visual vector), so every number can be worked out
by hand; one test runs the real tiny AVAR-Net."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from avarnet.evaluation import evaluate, format_report
from avarnet.features.spec import FeatureSpec
from avarnet.features.table import FeatureSet
from avarnet.models.avarnet import pool_clip_logits, segment_anomaly_scores
from avarnet.predictor import Predictor, seeded_artifact

LABELS = ["Normal", "Fight", "Riot"]
N, F, R = range(3)


class Echo(nn.Module):
    """Segment logits ``(B, T, C)`` = 10 x visual (one-hot per segment picks the class)."""

    normal_index = N

    def forward(self, audio, visual, mask, has_audio):
        seg = 10.0 * visual
        return {
            "segment_logits": seg,
            "clip_logits": pool_clip_logits(seg.transpose(1, 2), mask),
        }

    def anomaly_scores(self, segment_logits, mask=None):
        return segment_anomaly_scores(segment_logits, normal_index=N, mask=mask)


def _spec(**changes) -> FeatureSpec:
    base = FeatureSpec(
        preset="custom",
        audio_backbone="none",
        audio_revision=None,
        visual_backbone="none",
        visual_weights="none",
        visual_revision=None,
        sample_rate=16000,
        audio_normalize=False,
        image_size=8,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        interpolation="bilinear",
        frames_per_segment=1,
        segment_seconds=1.0,
        segment_frames=None,
        audio_dim=1,
        visual_dim=len(LABELS),
    )
    return dataclasses.replace(base, **changes)


def _predictor(spec: FeatureSpec) -> Predictor:
    meta = {"model_name": "echo", "labels": LABELS, "feature_spec": spec.to_dict()}
    return Predictor(Echo(), meta)


def _featureset(spec, clips, *, segment_gt=None, gt_intervals=None, gt_available=None):
    """``clips``: (true label, [predicted class per segment])."""
    n = len(clips)
    visual = [np.eye(len(LABELS), dtype=np.float32)[segs] for _, segs in clips]
    return FeatureSet(
        spec=spec,
        video_id=[f"v{i}" for i in range(n)],
        label=[label for label, _ in clips],
        labels=[[label] for label, _ in clips],
        split=["test"] * n,
        audio=[np.zeros((len(v), 1), np.float32) for v in visual],
        visual=visual,
        has_audio=np.ones(n, bool),
        segment_gt=segment_gt or [np.zeros(len(v), np.int8) for v in visual],
        gt_intervals=gt_intervals or [[] for _ in visual],
        gt_available=np.asarray(gt_available or [False] * n, bool),
        duration_s=np.array([float(len(v)) for v in visual]),
    )


# true [N, F, F, R, R], predicted [N, F, R, R, N]
CLIPS = [
    ("Normal", [N, N]),
    ("Fight", [F, F, F]),
    ("Fight", [R, R]),
    ("Riot", [R, R, R, R]),
    ("Riot", [N]),
]


def test_classification_metrics_match_hand_computed_values(tmp_path):
    spec = _spec()
    result = evaluate(_predictor(spec), _featureset(spec, CLIPS), out_dir=tmp_path / "eval")
    assert result["clips"] == 5 and result["labels"] == LABELS
    assert result["accuracy"] == pytest.approx(3 / 5)
    # per class: Normal p 1/2 r 1 f1 2/3; Fight p 1 r 1/2 f1 2/3; Riot p 1/2 r 1/2 f1 1/2
    assert result["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    rows = {r["label"]: r for r in result["per_class"]}
    assert rows["Normal"] == pytest.approx(
        {"label": "Normal", "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    )
    assert (rows["Fight"]["precision"], rows["Fight"]["recall"]) == (1.0, 0.5)
    assert rows["Fight"]["support"] == 2
    assert (rows["Riot"]["precision"], rows["Riot"]["recall"], rows["Riot"]["f1"]) == (
        0.5,
        0.5,
        0.5,
    )
    assert result["confusion"] == [[1, 0, 0], [0, 1, 1], [1, 0, 1]]  # rows true, cols predicted
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 0
    assert result["confusion_matrix_png"] == str(tmp_path / "eval" / "confusion_matrix.png")
    # No clip has frame-level ground truth: no anomaly numbers.
    assert not {"xd_ap", "segment_ap_auc"} & result.keys()


def test_xd_frame_ap_when_ground_truth_is_present():
    """16 frames a segment. Clip 0 scores its first segment anomalous but the second is
    annotated; clip 1 is all normal. 64 frames: 16 score high (all normal), 48 score low
    (16 of them anomalous): average precision = 16 / 64 = 0.25."""
    spec = _spec(segment_frames=16)
    fs = _featureset(
        spec,
        [("Fight", [F, N]), ("Normal", [N, N])],
        gt_intervals=[[[16, 32]], []],
        gt_available=[True, True],
    )
    result = evaluate(_predictor(spec), fs)
    assert result["xd_average_precision"] == pytest.approx(0.25)
    # trapezoid through (recall, precision) = (0, 1), (0, 0), (1, 0.25)
    assert result["xd_ap"] == pytest.approx(0.125)
    assert "segment_ap_auc" not in result

    perfect = _featureset(
        spec,
        [("Fight", [N, F]), ("Normal", [N, N])],
        gt_intervals=[[[16, 32]], []],
        gt_available=[True, True],
    )
    result = evaluate(_predictor(spec), perfect)
    assert result["xd_ap"] == pytest.approx(1.0) and result["xd_average_precision"] == 1.0


def test_only_clips_with_ground_truth_count_for_ap():
    spec = _spec(segment_frames=16)
    fs = _featureset(
        spec,
        [("Fight", [N, F]), ("Riot", [R, N])],  # the second has no ground truth
        gt_intervals=[[[16, 32]], []],
        gt_available=[True, False],
    )
    assert evaluate(_predictor(spec), fs)["xd_ap"] == pytest.approx(1.0)


def test_segment_ap_for_features_on_a_seconds_grid():
    spec = _spec()
    fs = _featureset(
        spec,
        [("Fight", [N, F, F]), ("Normal", [F, N])],
        segment_gt=[np.array([0, 1, 1], np.int8), np.array([0, 0], np.int8)],
        gt_available=[True, True],
    )
    result = evaluate(_predictor(spec), fs)
    # 3 high scores (2 anomalous), 2 low (normal): AP = 1 * (2/3)
    assert result["segment_average_precision"] == pytest.approx(2 / 3)
    assert "xd_ap" not in result


def test_ap_is_left_out_when_the_ground_truth_has_one_class():
    spec = _spec()
    fs = _featureset(spec, [("Normal", [N, N])], gt_available=[True])
    assert "segment_ap_auc" not in evaluate(_predictor(spec), fs)
    xd = _spec(segment_frames=16)
    fs = _featureset(xd, [("Fight", [F])], gt_intervals=[[[0, 16]]], gt_available=[True])
    assert "xd_ap" not in evaluate(_predictor(xd), fs)


def test_refuses_an_empty_set_and_unknown_labels():
    spec = _spec()
    with pytest.raises(ValueError, match="no clips"):
        evaluate(_predictor(spec), _featureset(spec, []))
    with pytest.raises(ValueError, match=r"labels \['Arson'\] are not among the model's classes"):
        evaluate(_predictor(spec), _featureset(spec, [("Arson", [N])]))


def test_format_report():
    spec = _spec(segment_frames=16)
    fs = _featureset(
        spec,
        [("Fight", [N, F, F]), ("Normal", [N, N])],
        gt_intervals=[[[16, 48]], []],
        gt_available=[True, True],
    )
    lines = format_report(evaluate(_predictor(spec), fs)).splitlines()
    assert lines[0] == "clips 2   accuracy 1.0000   macro-F1 1.0000"
    assert lines[1] == "XD-Violence frame AP (PR-AUC, trapezoidal): 1.0000"
    assert lines[2] == "XD-Violence frame AP (average_precision_score): 1.0000"
    assert lines[3].split() == ["class", "precision", "recall", "f1", "support"]
    assert lines[4].split() == ["Normal", "1.000", "1.000", "1.000", "1"]
    assert lines[6].split() == ["Riot", "0.000", "0.000", "0.000", "0"]
    assert len(lines) == 7


def test_the_real_tiny_model_agrees_with_its_own_predictions(tmp_path, tiny_spec):
    predictor = Predictor.from_dir(
        seeded_artifact(tmp_path / "m", "avarnet_tiny", tiny_spec, LABELS, seed=0)
    )
    rng = np.random.default_rng(0)
    lengths = [3, 5, 4, 2]
    fs = FeatureSet(
        spec=tiny_spec,
        video_id=list("abcd"),
        label=["Normal", "Fight", "Riot", "Fight"],
        labels=[["Normal"], ["Fight"], ["Riot"], ["Fight"]],
        split=["test"] * 4,
        audio=[rng.standard_normal((t, tiny_spec.audio_dim)).astype(np.float32) for t in lengths],
        visual=[rng.standard_normal((t, tiny_spec.visual_dim)).astype(np.float32) for t in lengths],
        has_audio=np.array([True, True, False, True]),
        segment_gt=[np.zeros(t, np.int8) for t in lengths],
        gt_intervals=[[] for _ in lengths],
        gt_available=np.zeros(4, bool),
        duration_s=np.array(lengths, float),
    )
    with torch.no_grad():
        preds = predictor.predict(fs.audio, fs.visual, fs.has_audio)
    hits = sum(p.label == t for p, t in zip(preds, fs.label))
    result = evaluate(predictor, fs)
    assert result["accuracy"] == pytest.approx(hits / 4)
    assert np.sum(result["confusion"]) == 4
