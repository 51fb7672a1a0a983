"""Training with real Ray Train on the tiny feature table; MLflow checked through its client."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from ray import cloudpickle

from avarnet.config import load_config
from avarnet.features import table as ft
from avarnet.features.backbones import build_feature_spec
from avarnet.predictor import Predictor
from glue.train import TrainingDataError, check_training_data, run_training


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "model.name=avarnet_tiny",
            "train.epochs=3",
            "train.batch_size=8",
            "train.lr=0.003",
            "train.cpus_per_worker=0.5",
            *overrides,
        ],
    )


# ------------------------------------------------------------------ bad data, before training
def _table(tmp_path: Path, rows: list[tuple[str, str]], spec=None, nan: bool = False) -> Path:
    spec = spec or build_feature_spec("tiny")
    rng = np.random.default_rng(0)
    clips = []
    for i, (label, split) in enumerate(rows):
        audio = rng.normal(size=(3, spec.audio_dim)).astype(np.float32)
        if nan and i == 0:
            audio[1, 2] = np.nan
        clips.append(
            {
                "video_id": f"v{i}",
                "path": f"/data/v{i}.mp4",
                "label": label,
                "labels": [label],
                "split": split,
                "audio": audio,
                "visual": rng.normal(size=(3, spec.visual_dim)).astype(np.float32),
                "has_audio": True,
                "duration_s": 3.0,
                "segment_gt": np.zeros(3, np.int8),
            }
        )
    out = tmp_path / "features"
    ft.save_spec(spec, out)
    ft.write_part(clips, out, spec)
    return out


GOOD = [("Normal", "train"), ("Abuse", "train"), ("Normal", "test"), ("Abuse", "val")]


@pytest.mark.parametrize(
    "rows, nan, match",
    [
        ([("Normal", "test"), ("Abuse", "test")], False, "training split is empty"),
        ([("Normal", "train"), ("Normal", "train"), ("Normal", "test")], False, "single class"),
        (GOOD + [("Crash", "test")], False, r"test labels \['Crash'\] never occur"),
        (GOOD, True, "NaN values in the audio features"),
    ],
)
def test_bad_training_data_is_refused_before_training(tmp_path, rows, nan, match):
    with pytest.raises(TrainingDataError, match=match):
        check_training_data(_table(tmp_path, rows, nan=nan))


def test_features_of_another_spec_are_refused(tmp_path):
    from avarnet.features.spec import FeatureSpecMismatch

    d = _table(tmp_path, GOOD)
    with pytest.raises(FeatureSpecMismatch, match="another FeatureSpec") as err:
        check_training_data(d, build_feature_spec("tiny", frames_per_segment=2))
    assert "frames_per_segment" in str(err.value) and "\n" not in str(err.value)


def test_features_of_another_chunk_length_are_refused(tmp_path):
    # The chunk length is Wav2Vec2's audio context: a model of 16-segment chunks refuses
    # a table extracted with the default 32.
    from avarnet.features.spec import FeatureSpecMismatch

    d = _table(tmp_path, GOOD)  # build_feature_spec("tiny"): chunk_segments 32
    with pytest.raises(FeatureSpecMismatch, match="another FeatureSpec") as err:
        check_training_data(d, build_feature_spec("tiny", chunk_segments=16))
    assert set(err.value.differences) == {"chunk_segments"}
    assert "chunk_segments: 16 != 32" in str(err.value)


def test_cli_train_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from workflows.cli import main

    d = _table(tmp_path, [("Normal", "train"), ("Normal", "test")])
    assert main(["train", "--features", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avarnet: error:") and "single class" in err and "\n" not in err


# ----------------------------------------------------------------------- real training runs
@pytest.fixture(scope="module")
def trained(ray_session, tiny_features, tmp_path_factory, new_store):
    """One in-process training run (ScalingConfig(num_workers=0)), shared by the checks."""
    out = tmp_path_factory.mktemp("train0")
    cfg = _cfg(out, "train.workers=0", "train.epochs=4")
    uri = new_store(out)
    return cfg, uri, run_training(cfg, tiny_features, tracking_uri=uri)


def test_in_process_training_logs_everything_to_mlflow(trained, tiny_features):
    cfg, uri, res = trained
    client = MlflowClient(uri)
    run = client.get_run(res["run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.name"] == "avarnet_tiny" and params["train.epochs"] == "4"
    assert params["features_dir"] == str(tiny_features)
    # Per-epoch metrics, one point per epoch, and the final test metrics.
    history = client.get_metric_history(res["run_id"], "train_loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    assert len(client.get_metric_history(res["run_id"], "val_macro_f1")) == 4
    assert run.data.metrics["test_accuracy"] == pytest.approx(res["accuracy"])
    assert run.data.metrics["test_macro_f1"] == pytest.approx(res["macro_f1"])
    arts = {a.path for a in client.list_artifacts(res["run_id"], "eval")}
    assert {"eval/confusion_matrix.png", "eval/report.json"} <= arts
    model_files = {a.path for a in client.list_artifacts(res["run_id"], "model")}
    assert {"model/model.json", "model/model.pt"} <= model_files
    # Registered as a new version of 'avarnet'.
    assert res["model_uri"] == "models:/avarnet/1"
    mv = client.get_model_version("avarnet", "1")
    assert mv.run_id == res["run_id"]


def test_registered_model_predicts_like_the_artifact(trained, tiny_features, tmp_path):
    from glue.tracking import download_model

    cfg, uri, res = trained
    local = Predictor.from_dir(res["artifact_dir"])
    remote = Predictor.load(
        res["model_uri"], resolver=lambda u: download_model(u, uri, dst=tmp_path / "dl")
    )
    fs = ft.read_features(tiny_features, splits=["test"])
    a = local.predict(fs.audio, fs.visual, fs.has_audio)
    b = remote.predict(fs.audio, fs.visual, fs.has_audio)
    assert len(a) == len(b) == len(fs)
    for pa, pb, clip in zip(a, b, fs.audio):
        np.testing.assert_allclose(pa.probabilities, pb.probabilities, rtol=1e-6)
        assert pa.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert pa.segment_scores.shape == (len(clip),)
    assert remote.labels == local.labels and remote.spec == fs.spec
    desc = json.loads((Path(res["artifact_dir"]) / "model.json").read_text())
    assert desc["feature_spec"]["audio_dim"] == fs.spec.audio_dim


class KillOnce:
    """A test-only epoch hook: the worker process SIGKILLs itself at the start of
    ``epoch``, once (``marker`` records that it did)."""

    def __init__(self, epoch: int, marker: Path):
        self.epoch, self.marker = epoch, str(marker)

    def __call__(self, epoch: int) -> None:
        if epoch == self.epoch and not os.path.exists(self.marker):
            Path(self.marker).write_text("failed once")
            os.kill(os.getpid(), signal.SIGKILL)


# Ray's workers cannot import this test module: send the hook by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_training_resumes_from_checkpoint_after_a_worker_is_killed(
    ray_session,
    tiny_features,
    tmp_path,
    new_store,
):
    """The training worker's process is SIGKILLed at the start of epoch 2 (as on a lost
    node): Ray Train restarts the worker group, which goes on from a checkpoint."""
    marker = tmp_path / "failed-once"
    cfg = _cfg(tmp_path, "train.workers=1", "train.epochs=3", "train.max_failures=1")
    uri = new_store(tmp_path)
    res = run_training(
        cfg,
        tiny_features,
        tracking_uri=uri,
        register=False,
        loop_overrides={"epoch_hook": KillOnce(2, marker)},
    )
    assert marker.exists()  # the worker was killed at epoch 2 ...
    steps = sorted(
        m.step for m in MlflowClient(uri).get_metric_history(res["run_id"], "train_loss")
    )
    # ... and the new worker went on from a checkpoint, not from scratch: epoch 0 ran once.
    # (A report still in flight when a process dies can be lost, so epoch 1 may run again.)
    assert set(steps) == {0, 1, 2} and steps.count(0) == 1 and len(steps) <= 4, steps
    assert res["accuracy"] >= 0.0


def _row_keys(rows) -> list[tuple]:
    """Feature rows (a pyarrow table or a DataFrame), in order, each by its label, length,
    audio flag and the sum of its visual features."""
    frame = rows if hasattr(rows, "iloc") else rows.to_pandas()
    sums = [round(float(np.stack(v).sum()), 3) for v in frame["visual"]]
    lengths = [len(v) for v in frame["visual"]]
    return list(zip(frame["label"], lengths, frame["has_audio"], sums))


def test_a_large_table_streams_through_ray_data_with_the_rows_the_driver_reads(
    ray_session, tiny_features
):
    """A small table is read by the driver and put in the object store as it is; a large
    one is read and filtered by Ray Data's tasks: the same rows either way. A worker reads
    its shard of a large one through Ray Data in the first epoch and keeps it in memory for
    the next ones (glue.train._CachedShard; a shard over its budget streams every epoch)."""
    from avarnet.training import read_split_tables
    from glue.train import _CachedShard, feature_datasets, feature_tables, is_small_table

    def rows(frame) -> list[tuple]:
        return sorted(_row_keys(frame))

    assert is_small_table(tiny_features) and not is_small_table(tiny_features, 0)
    large = feature_datasets(tiny_features)
    small = dict(zip(("train", "val"), ray_session.get(feature_tables(tiny_features))))
    counts = check_training_data(tiny_features).split_counts
    for split, table in read_split_tables(tiny_features, ("train", "val")).items():
        assert large[split].count() == small[split].num_rows == counts[split]
        assert rows(large[split].to_pandas()) == rows(table.to_pandas())
        assert small[split].equals(table)
    ids = rows(small["train"].to_pandas())
    assert len(set(ids)) == len(ids)

    def epoch(shard: _CachedShard, seed: int) -> list[tuple]:
        return sum((_row_keys(b) for b in shard.batches(4, seed=seed)), [])

    kept = _CachedShard(large["train"].iterator(), max_bytes=2**30)
    first = epoch(kept, seed=1)  # through Ray Data
    assert kept.table is not None and sorted(first) == ids
    assert sorted(epoch(kept, seed=2)) == ids and epoch(kept, 2) == epoch(kept, 2)
    assert epoch(kept, 2) != epoch(kept, 3)  # reshuffled from memory every epoch
    streamed = _CachedShard(large["train"].iterator(), max_bytes=1)
    assert sorted(epoch(streamed, seed=1)) == ids and streamed.table is None


def test_cli_train_and_evaluate_json(ray_session, tiny_features, tmp_path, capfd, new_store):
    """Each verb's --json is exactly one JSON document on stdout (file-descriptor level:
    what Ray, Tune or MLflow print goes to the log file)."""
    from workflows.cli import main

    uri = new_store(tmp_path)
    common = [f"tracking.tracking_uri={uri}", f"output_dir={tmp_path}"]
    args = ["train", "--features", str(tiny_features), "--epochs", "2", "--workers", "0"]
    assert main([*args, "--json", *common]) == 0
    trained = json.loads(capfd.readouterr().out)
    assert {"accuracy", "macro_f1", "run_id", "model_uri"} <= set(trained)
    code = main(
        [
            "evaluate",
            "--model",
            trained["model_uri"],
            "--features",
            str(tiny_features),
            "--tracking-uri",
            uri,
            "--out",
            str(tmp_path / "eval"),
            "--json",
        ]
    )
    assert code == 0
    ev = json.loads(capfd.readouterr().out)
    assert ev["accuracy"] == pytest.approx(trained["accuracy"])
    assert ev["macro_f1"] == pytest.approx(trained["macro_f1"])
    assert (tmp_path / "eval" / "report.json").exists()
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000


def test_training_in_the_driver_on_a_small_table_starts_no_ray(tiny_features, tmp_path, new_store):
    """`avarnet train --workers 0` (Ray Train's local mode) on a small table trains and
    registers without Ray: with RAY_ADDRESS pointing where nothing listens, any ray.init
    would fail."""
    import subprocess

    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    args = ["train", "--features", str(tiny_features), "--epochs", "1", "--workers", "0"]
    args += ["--json", f"tracking.tracking_uri={new_store(tmp_path)}", f"output_dir={tmp_path}"]
    res = subprocess.run(
        [sys.executable, "-m", "workflows.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trained = json.loads(res.stdout)
    assert trained["model_uri"].startswith("models:/") and 0 <= trained["accuracy"] <= 1


def test_cli_train_seeds_reports_mean_and_std_and_registers_the_best_on_validation(
    ray_session,
    tiny_features,
    tmp_path,
    capfd,
    new_store,
):
    """`avarnet train --seeds 0,1`: one child run per seed under one parent run holding
    every metric's mean and std; the registered model is the seed with the best
    validation score (never chosen on test); the human report says so."""
    from workflows.cli import main

    uri = new_store(tmp_path)
    args = ["train", "--features", str(tiny_features), "--epochs", "2", "--workers", "0"]
    common = [f"tracking.tracking_uri={uri}", f"output_dir={tmp_path}", "train.lr=0.003"]
    assert main([*args, "--seeds", "0,1", "--json", *common]) == 0
    res = json.loads(capfd.readouterr().out)
    assert res["seeds"] == [0, 1] and res["selected_on"] == "val"
    per_seed = {row["seed"]: row for row in res["per_seed"]}
    assert set(per_seed) == {0, 1}
    acc = res["summary"]["accuracy"]
    values = [per_seed[0]["accuracy"], per_seed[1]["accuracy"]]
    assert acc["values"] == pytest.approx(values)
    assert acc["mean"] == pytest.approx(np.mean(values))
    assert acc["std"] == pytest.approx(np.std(values, ddof=1))

    client = MlflowClient(uri)
    parent = client.get_run(res["run_id"])
    assert parent.data.metrics["accuracy_mean"] == pytest.approx(acc["mean"])
    assert parent.data.params["selected_on"] == "val"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{res['run_id']}'"
    )
    assert sorted(c.info.run_name for c in children) == ["train-seed0", "train-seed1"]
    # The registered model is the seed whose best epoch scored best on validation.
    scores = {
        int(c.info.run_name[-1]): max(
            m.value for m in client.get_metric_history(c.info.run_id, "best_val_score")
        )
        for c in children
    }
    best_seed = max(scores, key=lambda s: (scores[s], -s))
    assert res["selected_seed"] == best_seed
    version = client.get_model_version("avarnet", res["model_uri"].rsplit("/", 1)[1])
    assert version.run_id == res["run_id"]

    assert main([*args, "--seeds", "0,1", *common]) == 0
    out = capfd.readouterr().out
    assert "(selected on validation)" in out and "± " in out and "over 2 seeds" in out
