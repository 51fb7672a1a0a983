"""XD-Violence end to end: released features imported as a table train (Ray Train),
evaluate with the field's frame-level AP and predict without Serve, while Serve refuses
the model (it has no encoders); the generated XD layout runs through the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avarnet.config import ConfigError, load_config
from avarnet.evaluation import evaluate
from avarnet.features.imported import import_xd_features
from avarnet.features.table import read_features
from avarnet.predictor import Predictor

CODES = ("B1", "B2", "B4", "B5", "B6", "G")


def _released(root: Path, seed: int = 0) -> Path:
    """Released-layout .npy files whose violent snippets carry their class's direction
    in the RGB and the audio features (the rest is noise), and the test annotations."""
    rng = np.random.default_rng(seed)
    rgb_dirs = {c: rng.standard_normal(1024).astype(np.float32) for c in CODES}
    aud_dirs = {c: rng.standard_normal(128).astype(np.float32) for c in CODES}
    lines = []
    for split, per_class, normals in (("train", 6, 24), ("test", 3, 8)):
        jobs = [(c, i) for c in CODES for i in range(per_class)] + [
            (None, i) for i in range(normals)
        ]
        for code, i in jobs:
            t = int(rng.integers(8, 20))
            label = f"{code}-0-0" if code else "A"
            name = f"Synth.Film.{split}__#00-0{i % 10}-00_00-0{i % 10}-30_{i}_label_{label}"
            if code:
                name = f"v={split}{code}{i:02d}xyz__#1_label_{label}"
            gt = np.zeros(t, bool)
            if code:
                s = int(rng.integers(0, t - 3))
                gt[s : s + int(rng.integers(2, 4))] = True
            rgb = rng.standard_normal((5, t, 1024)).astype(np.float32)
            audio = rng.standard_normal((t - 1, 128)).astype(np.float32)
            if code:
                rgb[:, gt] += 1.5 * rgb_dirs[code]
                audio[gt[:-1]] += 1.5 * aud_dirs[code]
            for k in range(5):
                (root / "i3d" / split).mkdir(parents=True, exist_ok=True)
                np.save(root / "i3d" / split / f"{name}__{k}.npy", rgb[k])
            (root / "vggish" / split).mkdir(parents=True, exist_ok=True)
            np.save(root / "vggish" / split / f"{name}__vggish.npy", audio)
            if split == "test" and code:
                idx = np.flatnonzero(gt[:-1])
                lines.append(f"{name} {16 * idx[0]} {16 * (idx[-1] + 1)}")
    (root / "annotations.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.integration
def test_imported_features_train_evaluate_and_predict_but_do_not_serve(
    ray_session, tmp_path, new_store
):
    from glue.train import check_training_data, run_training
    from serve.app import check_encodable, resolve_model

    root = _released(tmp_path / "xd")
    table = tmp_path / "features"
    summary = import_xd_features(
        root, table, annotations=root / "annotations.txt", crops="each", val_fraction=0.2
    )
    assert summary["violent_normal"]["test"] == {"violent": 18, "normal": 8}
    facts = check_training_data(table)
    assert facts.multilabel is False and "normal" in facts.labels and facts.split_counts["val"]
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "model.name=avarnet_tiny",
            "model.pooling=topk",
            "model.num_stages=1",
            "model.num_layers=2",
            "model.modality_dropout=0.0",
            "train.epochs=6",
            "train.batch_size=16",
            "train.lr=0.003",
            "train.workers=0",
        ],
    )
    uri = new_store(tmp_path)
    res = run_training(cfg, table, tracking_uri=uri, register=False)
    report = res["report"]
    assert report["split"] == "test" and report["clips"] == 26
    assert 0.0 <= report["xd_ap"] <= 1.0 and 0.0 <= report["xd_average_precision"] <= 1.0
    # Serve-free prediction: the Predictor on the table's features, the field's frame AP.
    predictor = Predictor.from_dir(res["artifact_dir"])
    test = read_features(table, splits=["test"])
    again = evaluate(predictor, test)
    assert again["xd_ap"] == pytest.approx(report["xd_ap"])
    preds = predictor.predict(test.audio, test.visual, test.has_audio)
    assert [len(p.segment_scores) for p in preds] == [len(v) for v in test.visual]
    # Serve has no encoders for I3D + VGGish: one clear refusal.
    ref = resolve_model(res["artifact_dir"], None, str(tmp_path))
    with pytest.raises(ConfigError, match="external backbones .*i3d-rgb visual, vggish audio"):
        check_encodable(ref)


@pytest.mark.integration
def test_generated_xd_layout_through_the_pipeline(ray_session, tmp_path, new_store):
    from avarnet.data.synthetic_xd import generate_xd_benchmark
    from workflows.pipeline import Pipeline

    videos = tmp_path / "videos"
    generate_xd_benchmark(videos, clips_per_class=1, seconds=4.0, seed=1)
    cfg = load_config(
        "workflows/configs/xd_synth.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            f"data.path={videos}",
            f"data.annotations={videos / 'annotations.txt'}",
            f"tracking.tracking_uri={new_store(tmp_path)}",
            "train.epochs=3",
            "train.workers=0",
        ],
    )
    pipe = Pipeline(cfg, progress=False)
    results = {r.stage: r for r in pipe.run(["data", "extract", "train"])}
    assert results["data"].data["clips"] == 22
    assert results["extract"].data["clips_failed"] == 0  # names with '#' decode
    report = pipe.state["train_report"]
    assert report["split"] == "test" and report["clips"] == 10
    assert "xd_ap" in report and "xd_average_precision" in report
    fs = read_features(tmp_path / "run" / "features")
    assert fs.spec.segment_frames == 16
