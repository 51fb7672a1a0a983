"""Hyperparameter search with Ray Tune (the Ray 2.60 Train V2 pattern).

Each trial is a function that builds its ``TorchTrainer`` with the same
:func:`workflows.train.build_trainer` as plain training, with Tune's sampled values as
config overrides and ``TuneReportCallback`` in its run config, and calls ``fit()``.
ASHA stops weak trials on validation macro-F1; Optuna (TPE) proposes configurations.

MLflow: a parent run for the search, a child run per trial (params, per-epoch metrics,
``avarnet.trial_outcome`` = completed | stopped_early | failed). The best trial's model is
evaluated on the test split, registered as a new version of ``avarnet`` and given the
alias ``champion``. An interrupted search resumes from ``<output_dir>/tune/<name>``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from avarnet.config import Config, apply_overrides, config_to_dict

__all__ = ["SEARCH_SPACE", "run_search", "sample_space"]

# Config key -> (kind, arguments). Kinds: loguniform(lo, hi), uniform(lo, hi), choice([...]).
SEARCH_SPACE: dict[str, tuple[str, Any]] = {
    "train.lr": ("loguniform", (3e-4, 1e-2)),
    "model.num_stages": ("choice", [1, 2, 3]),
    "model.num_layers": ("choice", [4, 6, 8]),
    "model.num_filters": ("choice", [16, 32, 64]),
    "model.dropout": ("uniform", (0.0, 0.5)),
    "train.smoothing_weight": ("uniform", (0.0, 0.3)),
    "model.modality_dropout": ("uniform", (0.0, 0.4)),
    "model.fusion": ("choice", ["early", "late"]),
}


def sample_space(space: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """The search space as Tune domains (keys keep their dotted config names)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, (kind, arg) in space.items():
        if kind == "loguniform":
            out[key] = tune.loguniform(*arg)
        elif kind == "uniform":
            out[key] = tune.uniform(*arg)
        elif kind == "choice":
            out[key] = tune.choice(list(arg))
        else:
            raise ValueError(f"{key}: unknown search kind {kind!r} (loguniform, uniform, choice)")
    return out


def _trial(config: dict[str, Any]) -> None:
    """One Tune trial: train with the sampled overrides, metrics flow to Tune per epoch."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from avarnet.config import config_from_dict
    from workflows import tracking
    from workflows.train import build_trainer

    base = config_from_dict(config["base_config"])
    sampled = {k: v for k, v in config.items() if "." in k}
    cfg = apply_overrides(base, [f"{k}={v}" for k, v in sampled.items()])
    trial_id = ray.tune.get_context().get_trial_id()
    uri = config["tracking_uri"]
    run = tracking.open_run(
        uri,
        cfg.tracking.experiment,
        f"trial-{trial_id}",
        parent_run_id=config["parent_run_id"],
        tags={"avarnet.trial_id": trial_id, "avarnet.stage": "tune-trial"},
    )
    run.log_params(sampled)
    trainer = build_trainer(
        cfg,
        config["features_dir"],
        storage_path=Path(config["storage_path"]) / "trials",
        name=f"trial-{trial_id}",
        tracking_uri=uri,
        run_id=run.run_id,
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()  # ASHA may stop the trial here; the driver closes its run with the outcome


def plot_trials(trials: list[dict[str, Any]], path: Path) -> Path:
    """Validation macro-F1 of every trial against each numeric searched hyperparameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in SEARCH_SPACE if any(isinstance(t.get(k), (int, float)) for t in trials)]
    fig, axes = plt.subplots(
        1, max(len(keys), 1), figsize=(3.2 * max(len(keys), 1), 3), squeeze=False
    )
    colors = {"completed": "tab:green", "stopped_early": "tab:orange", "failed": "tab:red"}
    for ax, key in zip(axes[0], keys):
        for t in trials:
            if isinstance(t.get(key), (int, float)) and t.get("val_macro_f1") is not None:
                ax.scatter(t[key], t["val_macro_f1"], c=colors[t["outcome"]], s=25)
        ax.set_xlabel(key)
        if key == "train.lr":
            ax.set_xscale("log")
    axes[0][0].set_ylabel("best val macro-F1")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_search(
    cfg: Config,
    features_dir: str | Path,
    *,
    tracking_uri: str,
    parent_run_id: str | None = None,
    name: str = "search",
    space: dict[str, tuple[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a search; register the best trial's model as ``champion``."""
    import ray.train
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from avarnet.evaluation import evaluate
    from avarnet.features import table as ft
    from avarnet.predictor import Predictor
    from workflows import tracking
    from workflows.train import artifact_from_checkpoint, check_training_data

    features_dir = Path(features_dir).resolve()
    facts = check_training_data(features_dir)
    root = Path(cfg.output_dir).resolve()
    storage = root / "tune"
    t0 = time.perf_counter()
    with tracking.start_run(
        tracking_uri,
        cfg.tracking.experiment,
        name,
        parent_run_id=parent_run_id,
        tags={"avarnet.stage": "tune"},
    ) as parent:
        parent.log_config(cfg)
        param_space = {
            **sample_space(space or SEARCH_SPACE),
            "base_config": config_to_dict(cfg),
            "features_dir": str(features_dir),
            "tracking_uri": tracking_uri,
            "parent_run_id": parent.run_id,
            "storage_path": str(storage),
        }
        trainable = tune.with_resources(_trial, {"CPU": 0.01})
        exp_dir = storage / name
        if tune.Tuner.can_restore(str(exp_dir)):
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
        else:
            t = cfg.tune
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric="val_macro_f1",
                    mode="max",
                    num_samples=t.trials,
                    max_concurrent_trials=t.max_concurrent,
                    time_budget_s=t.time_budget_s,
                    scheduler=ASHAScheduler(
                        max_t=cfg.train.epochs,
                        grace_period=t.grace_period,
                        reduction_factor=t.reduction_factor,
                    ),
                    search_alg=OptunaSearch(seed=cfg.train.seed),
                ),
                run_config=tune.RunConfig(
                    name=name, storage_path=str(storage), verbose=1 if progress else 0
                ),
            )
        grid = tuner.fit()
        trials = []
        for res in grid:
            iters = (res.metrics or {}).get("training_iteration", 0)
            outcome = (
                "failed"
                if res.error
                else ("completed" if iters >= cfg.train.epochs else "stopped_early")
            )
            trials.append(
                {
                    "trial_id": (res.metrics or {}).get("trial_id"),
                    "outcome": outcome,
                    "epochs": iters,
                    "val_macro_f1": (res.metrics or {}).get("best_val_macro_f1"),
                    **{k: v for k, v in (res.config or {}).items() if "." in k},
                }
            )
            if res.metrics and res.metrics.get("trial_id"):
                tracking.end_trial_run(
                    tracking_uri,
                    cfg.tracking.experiment,
                    parent.run_id,
                    res.metrics["trial_id"],
                    outcome,
                )
        best = grid.get_best_result(metric="best_val_macro_f1", mode="max", filter_nan_and_inf=True)
        best_cfg = apply_overrides(cfg, [f"{k}={v}" for k, v in best.config.items() if "." in k])
        ckpt = ray.train.Checkpoint(best.metrics["checkpoint_path"])
        model_dir = root / "models" / f"tune-{parent.run_id}"
        with ckpt.as_directory() as d:
            artifact, _ = artifact_from_checkpoint(d, facts.spec, best_cfg, model_dir)
        report = evaluate(
            Predictor.from_dir(artifact), ft.read_features(features_dir, splits=["test"])
        )
        parent.log_metrics({f"best_test_{k}": v for k, v in report.items() if isinstance(v, float)})
        parent.log_metrics({"search_wall_seconds": time.perf_counter() - t0})
        parent.log_dict(trials, "trials.json")
        parent.log_artifact(plot_trials(trials, storage / f"{name}-summary.png"))
        model_uri = tracking.register_model(
            parent, artifact, cfg.tracking.registered_model, alias="champion"
        )
        return {
            "best_config": {k: v for k, v in best.config.items() if "." in k},
            "best_macro_f1": float(best.metrics.get("best_val_macro_f1", float("nan"))),
            "test_accuracy": report["accuracy"],
            "test_macro_f1": report["macro_f1"],
            "model_uri": model_uri,
            "trials_completed": sum(t["outcome"] == "completed" for t in trials),
            "trials_stopped_early": sum(t["outcome"] == "stopped_early" for t in trials),
            "trials_failed": sum(t["outcome"] == "failed" for t in trials),
            "trials": trials,
            "run_id": parent.run_id,
            "wall_seconds": time.perf_counter() - t0,
        }
