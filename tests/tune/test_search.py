"""Ray Tune search on the tiny feature table, with real Ray and a real MLflow store."""

from __future__ import annotations

import json
import os
import signal

import pytest
from mlflow.tracking import MlflowClient

from avarnet.config import ConfigError, load_config
from tune.search import SEARCH_SPACE, SearchInterrupted, check_space, run_search

SPACE = (
    "tune.space={train.lr: {loguniform: [0.00001, 0.01]}, model.num_filters: {choice: [16, 32]}}"
)


def _cfg(tmp_path, *more: str):
    return load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "model.name=avarnet_tiny",
            "model.num_layers=4",
            "train.epochs=3",
            "train.batch_size=8",
            "tune.trials=4",
            "tune.grace_period=1",
            "tune.reduction_factor=2",
            "tune.cpus_per_trial=1",
            SPACE,
            *more,
        ],
    )


def test_default_space_is_valid_and_bad_spaces_are_refused():
    cfg = load_config(None, [])
    assert set(check_space(SEARCH_SPACE, cfg)) == set(SEARCH_SPACE)
    for bad, match in [
        ({"train.lr": {"normal": [0, 1]}}, "expected one of"),
        ({"train.lr": {"uniform": [0.1, 0.01]}}, "lo < hi"),
        ({"train.nope": {"uniform": [0.1, 0.2]}}, "nope"),
        ({"model.fusion": {"choice": ["early", "sideways"]}}, "sideways"),
    ]:
        with pytest.raises(ConfigError, match=match):
            check_space(bad, cfg)


def test_search_stops_weak_trials_and_registers_the_best_as_champion(
    ray_session,
    tiny_features,
    tmp_path,
    new_store,
):
    uri = new_store(tmp_path)
    res = run_search(_cfg(tmp_path), tiny_features, tracking_uri=uri, progress=False)
    trials = res["trials"]
    assert len(trials) == 4 and res["trials_failed"] == 0
    assert res["trials_stopped_early"] >= 1, trials  # ASHA stopped at least one
    assert res["trials_completed"] + res["trials_stopped_early"] == 4
    for t in trials:  # completed trials ran every epoch, stopped ones fewer
        assert t["epochs"] == 3 if t["outcome"] == "completed" else 1 <= t["epochs"] < 3

    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("avarnet", "champion")
    assert res["model_uri"] == f"models:/avarnet/{champion.version}"
    assert champion.run_id == res["run_id"]
    # The champion is the best of the trials and the baseline (the configuration as
    # given) by validation score; the baseline wins ties.
    default = res["default"]
    assert res["selected_on"] == "val" and {"accuracy", "val_score"} <= set(default)
    best_score = max(t["val_score"] for t in trials)
    assert res["champion_is_default"] == (best_score <= default["val_score"])
    if res["champion_is_default"]:
        best_f1 = default["val_macro_f1"]
        assert res["best_config"] == {} and res["accuracy"] == default["accuracy"]
    else:
        best = [t for t in trials if t["val_score"] == best_score]
        best_f1 = best[0]["val_macro_f1"]
        assert any(res["best_config"]["train.lr"] == pytest.approx(t["train.lr"]) for t in best)
    assert res["best_macro_f1"] == pytest.approx(best_f1)
    local = client.download_artifacts(res["run_id"], "model/model.json", str(tmp_path / "dl"))
    with open(local) as f:
        model = json.load(f)
    assert model["metrics"]["best_val_macro_f1"] == pytest.approx(best_f1)

    # A child run per trial, closed with its outcome, with the sampled params and epochs.
    parent = client.get_run(res["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_stopped_early"] == res["trials_stopped_early"]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{res['run_id']}'"
    )
    assert len(children) == 5  # four searched trials and the baseline
    baseline = [c for c in children if "baseline" in c.data.params]
    assert len(baseline) == 1 and baseline[0].data.tags["avarnet.trial_outcome"] == "completed"
    children = [c for c in children if c not in baseline]
    outcomes = {
        c.data.tags["avarnet.trial_id"]: c.data.tags["avarnet.trial_outcome"] for c in children
    }
    assert outcomes == {t["trial_id"]: t["outcome"] for t in trials}
    assert parent.data.metrics["default_test_accuracy"] == default["accuracy"]
    for c in children:
        assert {"train.lr", "model.num_filters"} <= set(c.data.params)
        assert c.info.status == (
            "FINISHED" if outcomes[c.data.tags["avarnet.trial_id"]] == "completed" else "KILLED"
        )
        history = client.get_metric_history(c.info.run_id, "val_macro_f1")
        assert len(history) >= 1
    arts = {a.path for a in client.list_artifacts(res["run_id"])}
    assert {"trials.json", "search-trials.png", "space.json"} <= arts


class _InterruptAfterFirstTrial:
    """A Tune callback that presses Ctrl-C once the first searched trial has finished."""

    def __new__(cls):
        from ray.tune import Callback

        class Interrupt(Callback):
            fired = False

            def on_trial_complete(self, iteration, trials, trial, **info):
                searched = any("." in key for key in trial.config)  # not the baseline
                if searched and not Interrupt.fired:
                    Interrupt.fired = True
                    os.kill(os.getpid(), signal.SIGINT)

        return Interrupt()


def test_interrupted_search_resumes_and_finishes(ray_session, tiny_features, tmp_path, new_store):
    uri = new_store(tmp_path)
    cfg = _cfg(tmp_path, "tune.trials=2", "train.epochs=2")
    with pytest.raises(SearchInterrupted, match="run the same command again"):
        run_search(
            cfg,
            tiny_features,
            tracking_uri=uri,
            callbacks=[_InterruptAfterFirstTrial()],
            progress=False,
        )
    client = MlflowClient(uri)
    parents = client.search_runs(
        [client.get_experiment_by_name("avarnet").experiment_id], "tags.`avarnet.stage` = 'tune'"
    )
    assert len(parents) == 1 and parents[0].info.status == "KILLED"

    res = run_search(cfg, tiny_features, tracking_uri=uri, progress=False)
    assert res["resumed"] and res["run_id"] == parents[0].info.run_id  # same parent run
    assert len(res["trials"]) == 2
    assert all(t["outcome"] in ("completed", "stopped_early") for t in res["trials"])
    assert client.get_run(res["run_id"]).info.status == "FINISHED"
    champion = client.get_model_version_by_alias("avarnet", "champion")
    assert res["model_uri"] == f"models:/avarnet/{champion.version}"


def test_settings_that_cannot_work_are_refused_in_one_line_naming_the_keys():
    from tune.search import check_search_settings

    with pytest.raises(ConfigError, match=r"tune.grace_period \(4\) .* train.epochs \(3\)"):
        check_search_settings(load_config(None, ["train.epochs=3", "tune.grace_period=4"]))
    with pytest.raises(ConfigError, match=r"tune.reduction_factor"):
        check_search_settings(load_config(None, ["tune.reduction_factor=1"]))
    with pytest.raises(ConfigError, match=r"tune.trials"):
        check_search_settings(load_config(None, ["tune.trials=0"]))
    check_search_settings(load_config(None, ["train.epochs=3", "tune.grace_period=3"]))


def test_pipeline_refuses_them_before_anything_runs(tmp_path, capsys):
    from workflows.pipeline import main

    code = main(
        ["--config", "workflows/configs/demo.yaml", f"output_dir={tmp_path}", "train.epochs=3"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "avarnet: error: tune.grace_period (4)" in err and "Traceback" not in err
    assert not (tmp_path / "stages").exists()


def test_cli_tune_json_is_one_document(ray_session, tiny_features, tmp_path, capfd, new_store):
    """`avarnet tune --json`: exactly one JSON document on stdout; Tune's own lines ("View
    detailed results here", the TensorBoard hint) go to the log file."""
    from workflows.cli import main

    uri = new_store(tmp_path)
    code = main(
        [
            "tune",
            "--features",
            str(tiny_features),
            "--trials",
            "1",
            "--epochs",
            "2",
            "--json",
            f"output_dir={tmp_path}",
            f"tracking.tracking_uri={uri}",
            "tune.grace_period=1",
            "model.num_layers=4",
            SPACE,
        ]
    )
    captured = capfd.readouterr()
    assert code == 0, captured.err[-3000:]
    result = json.loads(captured.out)
    assert result["trials_completed"] + result["trials_stopped_early"] == 1
    assert result["model_uri"].startswith("models:/avarnet/")
    logs = (tiny_features.parent / "logs").glob("tune-*.log")  # beside the feature table
    log = max(logs, key=lambda p: p.stat().st_mtime).read_text()
    assert "View detailed results here" in log


def test_trial_resources_carry_the_worker_labels_as_a_selector():
    """A one-worker trial trains in its own process: its CPUs, placed by the labels
    through the bundle's label selector; a DDP trial's TorchTrainer reserves its own."""
    from ray.tune import PlacementGroupFactory

    from tune.search import trains_in_trial, trial_resources

    plain = load_config(None, ["tune.cpus_per_trial=1"])
    assert trains_in_trial(plain) and trial_resources(plain) == {"CPU": 1}
    placed = load_config(
        None, ["tune.cpus_per_trial=0.5", "train.worker_labels=avarnet.io/pool=compute"]
    )
    pgf = trial_resources(placed)
    assert trains_in_trial(placed) and isinstance(pgf, PlacementGroupFactory)
    assert pgf.bundles == [{"CPU": 0.5}]
    assert pgf._bound.arguments["bundle_label_selector"] == [{"avarnet.io/pool": "compute"}]
    ddp = load_config(None, ["train.workers=2", "train.worker_labels=avarnet.io/pool=compute"])
    assert not trains_in_trial(ddp) and trial_resources(ddp) == {"CPU": 0.01}
