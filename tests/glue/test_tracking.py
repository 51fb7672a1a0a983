"""glue.tracking on a real sqlite MLflow store in tmp_path (no Ray, no server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from avarnet.config import TrackingConfig
from avarnet.predictor import read_meta, seeded_artifact
from glue import tracking

LABELS = ["Normal", "Fight"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for the module: creating one (its migrations) takes seconds here.
    Tests keep apart by experiment name."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_resolve_tracking_uri_prefers_config_then_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = tracking.resolve_tracking_uri(TrackingConfig(), "runs/x")
    assert default.startswith("sqlite:////") and default.endswith("/runs/x/mlflow.db")  # absolute
    assert tracking.default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.resolve_tracking_uri(TrackingConfig(), tmp_path) == "http://mlflow.example:5000"
    cfg = TrackingConfig(tracking_uri="sqlite:////srv/mlflow.db")
    assert tracking.resolve_tracking_uri(cfg, tmp_path) == "sqlite:////srv/mlflow.db"


def test_a_run_logs_params_metrics_and_ends_finished(store):
    tracking_uri = store
    with tracking.start_run(tracking_uri, "exp", "train", tags={"avarnet.stage": "train"}) as run:
        run.log_params({"train": {"lr": 0.001, "seeds": [0, 1]}, "note": None})
        run.log_params({"train": {"lr": 0.5}})  # already logged: kept, not an error
        run.log_metrics({"val_macro_f1": 0.5, "flag": True, "text": "x"}, step=2)
        run.log_dict({"a": 1}, "summary.json")
    client = MlflowClient(tracking_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "train"
    assert got.data.params == {"train.lr": "0.001", "train.seeds": "[0, 1]", "note": ""}
    assert got.data.metrics == {"val_macro_f1": 0.5}  # booleans and text are not metrics
    assert client.get_metric_history(run.run_id, "val_macro_f1")[0].step == 2
    assert got.data.tags["avarnet.stage"] == "train"
    artifacts = got.info.artifact_uri
    beside = Path(store[len("sqlite:///") :]).parent / "mlartifacts"
    assert artifacts.startswith(beside.as_uri())  # beside the store
    assert [f.path for f in client.list_artifacts(run.run_id)] == ["summary.json"]
    assert run.ui_hint() == f"mlflow ui --backend-store-uri {tracking_uri}   (run {run.run_id})"


@pytest.mark.parametrize(("raised", "status"), [(KeyboardInterrupt, "KILLED"), (OSError, "FAILED")])
def test_a_run_ends_killed_or_failed_when_its_body_raises(store, raised, status):
    tracking_uri = store
    with pytest.raises(raised), tracking.start_run(tracking_uri, "exp", "r") as run:
        raise raised()
    assert MlflowClient(tracking_uri).get_run(run.run_id).info.status == status


def test_child_runs_and_reopening(store):
    tracking_uri = store
    parent = tracking.open_run(tracking_uri, "tune", "tune")
    child = tracking.trial_run(tracking_uri, "tune", parent.run_id, "t1", "trial t1")
    again = tracking.trial_run(tracking_uri, "tune", parent.run_id, "t1", "trial t1")
    assert again.run_id == child.run_id  # a restored trial resumes its own run
    tracking.log_epoch(tracking_uri, child.run_id, {"train_loss": 1.0}, step=1)
    tracking.end_trial_run(tracking_uri, parent.run_id, "t1", "stopped_early", 0.25)
    client = MlflowClient(tracking_uri)
    c = client.get_run(child.run_id)
    assert c.data.tags["mlflow.parentRunId"] == parent.run_id
    assert c.data.tags["avarnet.trial_outcome"] == "stopped_early"
    assert c.info.status == "KILLED"
    assert c.data.metrics == {"train_loss": 1.0, "best_val_macro_f1": 0.25}
    parent.end("KILLED")
    tracking.reopen_run(tracking_uri, parent.run_id)
    assert client.get_run(parent.run_id).info.status == "RUNNING"
    assert parent.experiment_id == c.info.experiment_id


def test_register_download_and_alias_a_model(store, tmp_path, tiny_spec):
    tracking_uri = store
    art = seeded_artifact(tmp_path / "art", "avarnet_tiny", tiny_spec, LABELS)
    with tracking.start_run(tracking_uri, "exp", "train") as run:
        first = tracking.register_model(run, art, "avarnet", alias="champion")
        second = tracking.register_model(run, art, "avarnet")
    assert (first, second) == ("models:/avarnet/1", "models:/avarnet/2")
    client = MlflowClient(tracking_uri)
    assert client.get_run(run.run_id).data.tags["avarnet.model_uri"] == "models:/avarnet/2"
    assert int(client.get_model_version_by_alias("avarnet", "champion").version) == 1

    assert tracking.set_alias(second, "champion", tracking_uri) == "models:/avarnet/2"
    info = tracking.model_version_info("models:/avarnet@champion", tracking_uri)
    assert info == {"name": "avarnet", "version": 2, "run_id": run.run_id}

    local = tracking.download_model("models:/avarnet@champion", tracking_uri, dst=tmp_path / "d")
    assert sorted(p.name for p in local.iterdir()) == ["model.json", "model.pt"]
    assert read_meta(local) == read_meta(art)
    by_run = tracking.download_model(f"runs:/{run.run_id}/model", tracking_uri, tmp_path / "r")
    assert read_meta(by_run)["labels"] == LABELS
    assert tracking.read_model_meta("models:/avarnet/1", tracking_uri) == read_meta(art)

    predictor = tracking.load_predictor("models:/avarnet/1", tracking_uri, tmp_path)
    assert predictor.labels == LABELS and predictor.spec == tiny_spec


def test_download_refuses_what_is_not_a_model_uri(store):
    with pytest.raises(ValueError, match="not an MLflow model URI"):
        tracking.download_model("/some/folder", store)


def test_write_json_is_atomic(tmp_path):
    path = tracking.write_json({"b": 1, "when": tmp_path}, tmp_path / "sub" / "summary.json")
    assert json.loads(path.read_text()) == {"b": 1, "when": str(tmp_path)}
    tracking.write_json([1, 2], path)
    assert json.loads(path.read_text()) == [1, 2]
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no .tmp left
