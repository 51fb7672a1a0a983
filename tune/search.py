"""Hyperparameter search with Ray Tune (the Ray 2.60 Train V2 pattern).

Each trial trains with Tune's sampled values as config overrides: a trial of one worker in
its own process (the step Ray Train runs; placed on a node with ``train.worker_labels``
through its placement group's label selector), a trial of several DDP workers through a
``TorchTrainer`` built by the same :func:`glue.train.build_trainer` as plain training,
with ``TuneReportCallback`` in its run config.
ASHA stops weak trials on validation macro-F1 (ties, frequent on small validation sets,
broken by the validation loss; one Tune iteration = one epoch); Optuna (TPE) proposes
configurations.

MLflow: a parent run for the search, a child run per trial (params, per-epoch metrics,
``avarnet.trial_outcome`` = completed | stopped_early | failed). The best trial's model is
evaluated on the test split, registered as a new version of ``avarnet`` and given the
alias ``champion``; the parent run keeps a table of the trials and a plot of validation
macro-F1 against the searched hyperparameters.

Interrupted searches (Ctrl-C, a lost driver) resume: running the same search again (same
``output_dir`` and name) restores it from ``<output_dir>/tune/<name>`` with
``Tuner.restore``, continues the unfinished trials from their checkpoints and reuses the
parent MLflow run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from avarnet.config import Config, ConfigError, apply_overrides, config_to_dict
from glue import private_api
from glue.runtime import warn_if_unplaceable

__all__ = [
    "SEARCH_SPACE",
    "SearchInterrupted",
    "check_search_settings",
    "check_space",
    "run_search",
    "to_tune_space",
]

# The default search space: config key -> {kind: arguments}.
SEARCH_SPACE: dict[str, dict[str, list]] = {
    "train.lr": {"loguniform": [3e-4, 1e-2]},
    "model.num_stages": {"choice": [1, 2, 3]},
    "model.num_layers": {"choice": [4, 6, 8]},
    "model.num_filters": {"choice": [16, 32, 64]},
    "model.dropout": {"uniform": [0.0, 0.5]},
    "train.smoothing_weight": {"uniform": [0.0, 0.3]},
    "model.modality_dropout": {"uniform": [0.0, 0.4]},
    "model.fusion": {"choice": ["early", "late"]},
}
_KINDS = ("loguniform", "uniform", "choice")
_STATE_FILE = "avarnet_search.json"


class SearchInterrupted(RuntimeError):
    """The search stopped before all its trials ran; running it again resumes it."""


def check_search_settings(cfg: Config) -> dict[str, tuple[str, list]]:
    """Refuse, in one line naming the keys, search settings that cannot work together
    (before Ray starts); returns the checked search space."""
    t = cfg.tune
    if t.trials < 1 or t.max_concurrent < 1:
        raise ConfigError(
            f"tune.trials ({t.trials}) and tune.max_concurrent ({t.max_concurrent}) must be >= 1"
        )
    if t.grace_period < 1 or t.grace_period > cfg.train.epochs:
        raise ConfigError(
            f"tune.grace_period ({t.grace_period}) must be between 1 and train.epochs "
            f"({cfg.train.epochs}): ASHA lets every trial run grace_period epochs of at most "
            "train.epochs; lower tune.grace_period or raise train.epochs"
        )
    if t.reduction_factor < 2:
        raise ConfigError(f"tune.reduction_factor ({t.reduction_factor}) must be >= 2")
    return check_space(t.space or SEARCH_SPACE, cfg)


def check_space(space: dict[str, Any], cfg: Config) -> dict[str, tuple[str, list]]:
    """Validate a search space against the config schema; ``{key: (kind, args)}``."""
    out: dict[str, tuple[str, list]] = {}
    for key, spec in space.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in _KINDS:
            raise ConfigError(
                f"tune.space.{key}: expected one of {{loguniform: [lo, hi]}}, "
                f"{{uniform: [lo, hi]}}, {{choice: [...]}}; got {spec!r}"
            )
        kind, args = next(iter(spec.items()))
        if not isinstance(args, (list, tuple)) or not args:
            raise ConfigError(f"tune.space.{key}: {kind} needs a list, got {args!r}")
        if kind != "choice" and (len(args) != 2 or not float(args[0]) < float(args[1])):
            raise ConfigError(f"tune.space.{key}: {kind} needs [lo, hi] with lo < hi")
        # Every value must be a valid setting of that key (the schema checks it).
        for value in args if kind == "choice" else args[:1]:
            apply_overrides(cfg, [f"{key}={json.dumps(value)}"])
        out[key] = (kind, list(args))
    return out


def to_tune_space(space: dict[str, tuple[str, list]]) -> dict[str, Any]:
    """Tune domains (keys keep their dotted config names)."""
    from ray import tune

    make = {
        "loguniform": lambda a: tune.loguniform(float(a[0]), float(a[1])),
        "uniform": lambda a: tune.uniform(float(a[0]), float(a[1])),
        "choice": lambda a: tune.choice(list(a)),
    }
    return {key: make[kind](args) for key, (kind, args) in space.items()}


def _sampled(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if "." in k}


def _overrides(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def _trial(config: dict[str, Any]) -> None:
    """One Tune trial: train with the sampled overrides; metrics flow to Tune per epoch.

    A trial of one training worker (``train.workers`` <= 1) trains in the trial's own
    process with :func:`avarnet.training.fit` (the step Ray Train runs; seconds of start-up
    instead of a Train controller and worker group per trial); more workers build their
    ``TorchTrainer`` with the same :func:`glue.train.build_trainer` as plain training.
    """
    import ray.tune

    from avarnet.config import config_from_dict
    from glue import tracking
    from glue.runtime import quiet_driver

    quiet_driver()  # the trial's own Ray Data reads and Train reports: warnings only
    sampled = _sampled(config)
    base = config["base_config"]
    base = json.loads(base) if isinstance(base, str) else base  # a dict: a search from before
    cfg = apply_overrides(config_from_dict(base), _overrides(sampled))
    trial_id = ray.tune.get_context().get_trial_id()
    uri = config["tracking_uri"]
    run = tracking.trial_run(
        uri, cfg.tracking.experiment, config["parent_run_id"], trial_id, f"trial-{trial_id}"
    )
    run.log_params(sampled or {"baseline": "the configuration as given"})
    if trains_in_trial(cfg):
        _fit_in_trial(cfg, config, trial_id, run)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    from glue.train import DataFacts, build_trainer

    trainer = build_trainer(
        cfg,
        config["features_dir"],
        facts=DataFacts.from_dict(config["data_facts"]),
        storage_path=Path(config["storage_path"]) / "trials",
        name=f"trial-{trial_id}",  # a restored trial resumes from its own checkpoints
        tracking_uri=uri,
        run_id=run.run_id,
        callbacks=[TuneReportCallback()],
    )
    result = trainer.fit()  # ASHA may stop the trial here; the driver closes its run
    if result.error is not None:
        raise result.error


def trains_in_trial(cfg: Config) -> bool:
    """Whether a trial trains in its own process (one worker; with ``train.worker_labels``
    the trial itself is placed on such a node, see :func:`trial_resources`) instead of
    through a TorchTrainer whose DDP workers are placed as ``train.*`` says."""
    return cfg.train.workers <= 1


def trial_bundle(cfg: Config) -> dict[str, float]:
    """One trial's (or one trial worker's) CPUs and GPUs, the zero ones left out."""
    asked = {"CPU": cfg.tune.cpus_per_trial, "GPU": cfg.tune.gpus_per_trial}
    return {k: v for k, v in asked.items() if v}


def trial_resources(cfg: Config):
    """What ``tune.with_resources`` gets for one trial: the trial's CPUs and GPUs, as a
    placement group of one bundle that carries ``train.worker_labels`` as its label
    selector when there are labels (Tune places the trial's actor in that bundle), or
    0.01 CPU for a trial whose TorchTrainer reserves its workers' resources itself."""
    from ray import tune

    if not trains_in_trial(cfg):
        return {"CPU": 0.01}
    bundle = trial_bundle(cfg)
    labels = dict(cfg.train.worker_labels)
    if not labels:
        return bundle
    return tune.PlacementGroupFactory([bundle], bundle_label_selector=[labels])


def _fit_in_trial(cfg: Config, config: dict[str, Any], trial_id: str, run) -> None:
    """Train in this trial's process; report every epoch with a checkpoint in the format
    of :mod:`glue.train` (so the winner becomes an artifact the same way), and resume
    from Tune's checkpoint when the trial was restored."""
    import ray.tune
    import torch

    from avarnet import training as T
    from avarnet.models import create_model
    from glue import train as W
    from glue.tracking import log_epoch

    facts = W.DataFacts.from_dict(config["data_facts"])
    loop = W.model_config(cfg, facts)
    threads = cfg.train.threads_per_worker
    torch.set_num_threads(threads or max(int(config.get("trial_cpus", 1)), 1))
    use_gpu = cfg.train.gpus_per_worker > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    recipe = T.Recipe.from_config(cfg.train)
    torch.manual_seed(recipe.seed)
    model = create_model(loop["model_name"], **loop["model_kwargs"]).to(device)
    optim = T.make_optimizer(model, recipe)
    start, best = 0, T.BestTracker(recipe.patience)
    ckpt = ray.tune.get_checkpoint()
    if ckpt is not None:  # a restored trial goes on from its last epoch
        with ckpt.as_directory() as d:
            start, best = W.load_checkpoint(Path(d), model, optim, device, recipe.patience)
    tables = T.read_split_tables(config["features_dir"])
    root = Path(config["storage_path"]) / "trials" / f"trial-{trial_id}" / "epochs"

    def on_epoch(metrics: dict[str, float], best: T.BestTracker, optimizer) -> None:
        epoch = int(metrics["epoch"])
        log_epoch(run.tracking_uri, run.run_id, metrics, step=epoch)
        # A checkpoint when the best improved (it carries the weights the trial's model is
        # made of; a restored trial goes on from there) or when the trial ends early.
        improved = best.epoch == epoch
        final = epoch == recipe.epochs - 1 or metrics["converged"]
        if not (improved or final):
            ray.tune.report(metrics)
            return
        path = W.write_checkpoint(
            str(root),
            epoch,
            W.checkpoint_files(model, optimizer, best),
            W.checkpoint_state(loop, epoch, best),
        )
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(str(path)))
        W.prune_checkpoints(str(root), keep=1)  # Tune has its own copy now

    T.fit(
        model,
        tables["train"],
        tables["val"],
        recipe,
        labels=loop["labels"],
        multilabel=loop["multilabel"],
        device=device,
        start_epoch=start,
        optimizer=optim,
        best=best,
        on_epoch=on_epoch,
    )


def plot_trials(trials: list[dict[str, Any]], keys: list[str], path: Path) -> Path:
    """Best validation macro-F1 of every trial against each numeric searched key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(isinstance(t.get(k), (int, float)) for t in trials)] or keys
    n = max(len(keys), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3), squeeze=False)
    colors = {"completed": "tab:green", "stopped_early": "tab:orange", "failed": "tab:red"}
    for ax, key in zip(axes[0], keys):
        for t in trials:
            if t.get("val_macro_f1") is not None and t.get(key) is not None:
                ax.scatter(
                    str(t[key]) if isinstance(t[key], str) else t[key],
                    t["val_macro_f1"],
                    c=colors[t["outcome"]],
                    s=25,
                )
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
    callbacks: list | None = None,
    progress: bool = True,
    facts=None,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a search; register the best model as ``champion``: the best
    searched trial if it beats the default configuration on validation, else the default.

    Ray must be initialised. ``callbacks`` are Tune callbacks (tests use one to interrupt).
    ``baseline``: the default configuration's model, trained already (the pipeline's train
    stage): ``val_score``, ``val_macro_f1``, test ``accuracy`` and ``macro_f1``,
    ``artifact_dir`` and its registered ``model_uri``; without it (and with
    ``tune.baseline``) the search trains the default as one more trial.

    Raises:
        SearchInterrupted: the search stopped early (Ctrl-C); call again to resume.
    """
    from glue import tracking

    search = _Search(cfg, features_dir, tracking_uri, name, facts, callbacks, progress)
    if trains_in_trial(search.cfg) and search.cfg.train.worker_labels:
        warn_if_unplaceable("Tune trials", search.cfg.train.worker_labels, trial_bundle(search.cfg))
    search.open(parent_run_id)
    try:
        default = search.default(baseline)
        trials, best_result = search.trials()
        # A searched trial must beat the default on validation by more than
        # min_improvement; a tie (frequent on small validation splits) keeps the default,
        # the configuration that was not picked by looking at this validation split.
        margin = search.cfg.tune.min_improvement
        if default is not None and _score(best_result) <= default["val_score"] + margin:
            best = default
        else:
            best = search.candidate(best_result, search.model_dir)
        summary = search.log_summary(best, default, trials)
        if best.get("model_uri"):  # the default, registered by the train stage already
            model_uri = tracking.set_alias(best["model_uri"], "champion", tracking_uri)
        else:
            model_uri = tracking.register_model(
                search.parent, best["artifact"], search.cfg.tracking.registered_model, "champion"
            )
    except SearchInterrupted:
        search.parent.end("KILLED")
        raise
    except BaseException:
        search.parent.end("FAILED")
        raise
    search.parent.end("FINISHED")
    return {**summary, "model_uri": model_uri}


class _Search:
    """One search's state: its config and data, its Tune experiments under
    ``<output_dir>/tune``, its parent MLflow run, and the candidates for champion."""

    def __init__(self, cfg, features_dir, tracking_uri, name, facts, callbacks, progress):
        from avarnet.features import table as ft
        from glue.train import check_training_data

        self.space = check_search_settings(cfg)
        self.features_dir = Path(features_dir).resolve()
        self.facts = facts or check_training_data(self.features_dir)
        if "val" not in self.facts.split_counts:
            raise ConfigError(f"{self.features_dir}: the search needs a val split to rank trials")
        t = cfg.tune
        # Trial resources: each training worker of a trial gets the tune.*_per_trial share.
        self.cfg = apply_overrides(
            cfg,
            [
                f"train.cpus_per_worker={t.cpus_per_trial}",
                f"train.gpus_per_worker={t.gpus_per_trial}",
            ],
        )
        self.name, self.tracking_uri = name, tracking_uri
        self.callbacks, self.progress = callbacks or [], progress
        self.storage = Path(self.cfg.output_dir).resolve() / "tune"
        self.eval_split = "test" if self.facts.split_counts.get("test") else "val"
        self.test_set = ft.read_features(self.features_dir, splits=[self.eval_split])
        self.t0 = time.perf_counter()

    # -- the parent run
    def open(self, parent_run_id: str | None) -> None:
        """Open the search's parent run, or reopen it when the search is restored."""
        from ray import tune

        from glue import tracking

        state_file = self.storage / f"{self.name}.{_STATE_FILE}"
        self.restoring = (
            tune.Tuner.can_restore(str(self.storage / self.name)) and state_file.exists()
        )
        if self.restoring:
            state = json.loads(state_file.read_text())
            self.parent = tracking.reopen_run(self.tracking_uri, state["parent_run_id"])
        else:
            self.parent = tracking.open_run(
                self.tracking_uri,
                self.cfg.tracking.experiment,
                self.name,
                parent_run_id=parent_run_id,
                tags={"avarnet.stage": "tune"},
            )
            self.parent.log_config(self.cfg)
            space = {k: {kind: args} for k, (kind, args) in self.space.items()}
            self.parent.log_dict(space, "space.json")
            self.storage.mkdir(parents=True, exist_ok=True)
            tracking.write_json({"parent_run_id": self.parent.run_id}, state_file)
        self.model_dir = (
            Path(self.cfg.output_dir).resolve() / "models" / f"tune-{self.parent.run_id}"
        )

    # -- experiments
    def _budget_hit(self) -> bool:
        budget = self.cfg.tune.time_budget_s
        return budget is not None and time.perf_counter() - self.t0 >= budget

    def _common(self) -> dict[str, Any]:
        """What every trial's config carries besides the sampled values."""
        return {
            # As JSON: Tune flattens nested param spaces with "/" as the delimiter, which
            # label keys (avarnet.io/pool) contain.
            "base_config": json.dumps(config_to_dict(self.cfg)),
            "features_dir": str(self.features_dir),
            "data_facts": self.facts.to_dict(),  # checked once here, not in every trial
            "tracking_uri": self.tracking_uri,
            "parent_run_id": self.parent.run_id,
            "storage_path": str(self.storage),
            "trial_cpus": self.cfg.tune.cpus_per_trial,
        }

    def _tuner(self, exp_name: str, num_samples: int, seed: int, baseline: bool):
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        t = self.cfg.tune
        in_process = trains_in_trial(self.cfg)
        trainable = tune.with_resources(_trial, trial_resources(self.cfg))
        path = self.storage / exp_name
        if tune.Tuner.can_restore(str(path)):
            restored = tune.Tuner.restore(
                str(path), trainable=trainable, resume_errored=True, restart_errored=False
            )
            return restored, True
        search = {
            "scheduler": ASHAScheduler(
                max_t=self.cfg.train.epochs,
                grace_period=t.grace_period,
                reduction_factor=t.reduction_factor,
            ),
            "search_alg": OptunaSearch(seed=seed),
        }
        worker_bundle = trial_bundle(self.cfg)
        callbacks = list(self.callbacks)
        if self.progress and not baseline:
            callbacks.append(_progress_callback(num_samples, self.cfg.train.epochs))
        if not in_process:
            callbacks.append(_release_callback(worker_bundle))
        space = self._common() if baseline else {**to_tune_space(self.space), **self._common()}
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="val_score",  # validation macro-F1, ties broken by the loss
                mode="max",
                num_samples=num_samples,
                max_concurrent_trials=t.max_concurrent,
                time_budget_s=None if baseline else t.time_budget_s,
                # A trial's process (torch, the model code, MLflow: 5-10 CPU-s to start)
                # takes the next trial instead of a new one starting.
                reuse_actors=True,
                **({} if baseline else search),
            ),
            run_config=tune.RunConfig(
                name=exp_name,
                storage_path=str(self.storage),
                verbose=0,  # Tune's tables would print every trial's whole config
                callbacks=callbacks,
            ),
        )
        return tuner, False

    def experiment(self, exp_name: str, num_samples: int, seed: int, *, baseline: bool = False):
        """Run experiment ``exp_name`` (restored when it was interrupted); its result grid
        and trial table. ``baseline``: one trial of the configuration as given."""
        from glue import tracking

        tuner, restored = self._tuner(exp_name, num_samples, seed, baseline)
        grid = tuner.fit()
        trials = _trial_table(grid, self.cfg.train.epochs)
        # Interrupted: trials left pending, or (a fresh experiment) fewer trials than
        # asked for before the time budget ran out.
        unfinished = [tr for tr in trials if tr["outcome"] == "unfinished"]
        short = not restored and len(trials) < num_samples and not self._budget_hit()
        if unfinished or short:
            raise SearchInterrupted(
                f"search {self.name!r} stopped after {len(trials) - len(unfinished)} of "
                f"{self.cfg.tune.trials} trials; run the same command again to resume it "
                f"({self.storage / self.name})"
            )
        for tr in trials:
            tracking.end_trial_run(
                self.tracking_uri,
                self.parent.run_id,
                tr["trial_id"],
                tr["outcome"],
                tr["val_macro_f1"],
            )
        return grid, trials

    def trials(self):
        """Run the searched trials; their table and the best result by validation."""
        t = self.cfg.tune
        grid, trials = self.experiment(self.name, t.trials, self.cfg.train.seed)
        grids = [grid]
        if len(trials) < t.trials and not self._budget_hit():
            # An interrupted experiment, once restored, finishes the trials it had started
            # but asks its searcher for no new ones: run the missing trials as a
            # continuation (itself restorable: its name depends only on what is done).
            grid, more = self.experiment(
                f"{self.name}-rest{len(trials)}",
                t.trials - len(trials),
                self.cfg.train.seed + len(trials),
            )
            grids.append(grid)
            trials += more
        return trials, max((_best_result(g) for g in grids), key=_score)

    # -- candidates for champion
    def candidate(self, result, out: Path) -> dict[str, Any]:
        """A trial's best model as an artifact, evaluated on the test split."""
        from ray.train import Checkpoint

        from avarnet.evaluation import evaluate
        from avarnet.predictor import Predictor
        from glue.train import artifact_from_checkpoint

        values = _sampled(result.config)
        ckpt = result.checkpoint or Checkpoint(result.metrics["checkpoint_path"])
        with ckpt.as_directory() as d:
            artifact, _ = artifact_from_checkpoint(
                d, self.facts.spec, apply_overrides(self.cfg, _overrides(values)), out
            )
        report = evaluate(Predictor.from_dir(artifact), self.test_set)
        return {
            "values": values,
            "val_score": _score(result),
            "val_macro_f1": float(result.metrics["best_val_macro_f1"]),
            "artifact": artifact,
            "accuracy": report["accuracy"],
            "macro_f1": report["macro_f1"],
            "report": report,
            "model_uri": None,
        }

    def default(self, baseline: dict[str, Any] | None) -> dict[str, Any] | None:
        """The default configuration's candidate: the given model (trained already), or
        one trial of it trained here (``tune.baseline``); None when neither."""
        if baseline is not None:
            return {"values": {}, "artifact": Path(baseline["artifact_dir"]), **baseline}
        if not self.cfg.tune.baseline:
            return None
        grid, _ = self.experiment(f"{self.name}-default", 1, self.cfg.train.seed, baseline=True)
        return self.candidate(
            _best_result(grid), self.model_dir.with_name(f"{self.model_dir.name}-0")
        )

    # -- the summary
    def log_summary(self, best: dict, default: dict | None, trials: list[dict]) -> dict:
        """Log the champion, the default beside it and the trials to the parent run; the
        search's summary (what :func:`run_search` returns, less the model URI)."""
        split = self.eval_split
        counts = {
            "trials_completed": sum(tr["outcome"] == "completed" for tr in trials),
            "trials_stopped_early": sum(tr["outcome"] == "stopped_early" for tr in trials),
            "trials_failed": sum(tr["outcome"] == "failed" for tr in trials),
        }
        wall = time.perf_counter() - self.t0
        metrics = {
            "best_val_macro_f1": best["val_macro_f1"],
            f"best_{split}_accuracy": best["accuracy"],
            f"best_{split}_macro_f1": best["macro_f1"],
            "search_wall_seconds": wall,
            "trials_completed": counts["trials_completed"],
            "trials_stopped_early": counts["trials_stopped_early"],
        }
        if default is not None:
            metrics["default_val_macro_f1"] = default["val_macro_f1"]
            metrics[f"default_{split}_accuracy"] = default["accuracy"]
            metrics[f"default_{split}_macro_f1"] = default["macro_f1"]
        self.parent.log_params({f"best.{k}": v for k, v in best["values"].items()})
        self.parent.log_params({"champion_is_default": best is default, "selected_on": "val"})
        self.parent.log_metrics(metrics)
        self.parent.log_dict(trials, "trials.json")
        plot = plot_trials(trials, list(self.space), self.storage / f"{self.name}-trials.png")
        self.parent.log_artifact(plot)
        keys = ("val_macro_f1", "val_score", "accuracy", "macro_f1")
        return {
            "best_config": best["values"],
            "champion_is_default": best is default,
            "default": None if default is None else {k: default[k] for k in keys},
            "selected_on": "val",
            "best_macro_f1": best["val_macro_f1"],
            "report": best.get("report"),  # the champion's test report (None: trained before)
            "accuracy": best["accuracy"],
            "macro_f1": best["macro_f1"],
            "eval_split": split,
            **counts,
            "trials": trials,
            "resumed": self.restoring,
            "run_id": self.parent.run_id,
            "tracking_uri": self.tracking_uri,
            "wall_seconds": wall,
        }


def _score(result) -> float:
    """A result's best validation score (macro-F1, ties broken by the loss); results of
    searches from before the score was reported rank by their macro-F1."""
    m = result.metrics or {}
    return float(m.get("best_val_score", m.get("best_val_macro_f1", float("-inf"))))


def _best_result(grid):
    """The experiment's result with the best validation score."""
    results = [r for r in grid if r.error is None and r.metrics]
    if not results:
        raise RuntimeError(f"no trial of {grid.experiment_path} finished an epoch")
    return max(results, key=_score)


def _progress_callback(total: int, max_epochs: int):
    """A progress bar on the user's stderr: trials finished of ``total``, with how many
    run, were stopped early by ASHA or failed, and the best validation macro-F1 so far
    (Tune's own tables are too wide to read, and go to the log)."""
    from ray.tune import Callback

    from glue import console

    class Progress(Callback):
        def __init__(self):
            self.bar = None
            self.best = None

        def _update(self, trials, starting=None) -> None:
            if self.bar is None:
                self.bar = console.progress_bar(total, "tune", "trial")
            done = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
            stopped = sum(
                t.status == "TERMINATED"
                and (t.last_result or {}).get("training_iteration", 0) < max_epochs
                for t in done
            )
            for t in done:
                f1 = (t.last_result or {}).get("best_val_macro_f1")
                if f1 is not None and (self.best is None or f1 > self.best):
                    self.best = f1
            self.bar.n = len(done)
            self.bar.set_postfix(
                # a trial being started is not RUNNING yet when Tune tells us
                running=sum(t.status == "RUNNING" or t is starting for t in trials),
                stopped_early=stopped,
                failed=sum(t.status == "ERROR" for t in trials),
                best_f1="-" if self.best is None else f"{self.best:.3f}",
                refresh=True,
            )

        def on_trial_start(self, iteration, trials, trial, **info):
            self._update(trials, starting=trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._update(trials)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._update(trials)

        def on_experiment_end(self, trials, **info):
            if self.bar is not None:
                self.bar.close()

    return Progress()


def _release_callback(worker_bundle: dict[str, float], grace_s: float = 3.0):
    """Free what a finished trial's training run could leave behind.

    A trial that ends (or is stopped by ASHA) takes its Ray Train controller with it; Ray
    Train's detached cleaner then removes the workers' placement group, but it finds the
    controller's state through the state API, which cannot answer when, for example, two
    Ray instances run on one machine. The group then keeps its CPUs and the next trial
    waits forever. So: when no other trial is running, placement groups of this job with
    the shape of a trial's training workers are leftovers, and are removed.
    """
    import logging
    import time as _time

    import ray
    from ray.tune import Callback

    log = logging.getLogger("avarnet.tune")

    def leftovers() -> list[str]:
        from ray.util import placement_group_table

        job = ray.get_runtime_context().get_job_id()
        return [
            pg_id
            for pg_id, info in placement_group_table().items()
            if pg_id.endswith(job)  # a placement group's id ends with its job's id
            and info.get("state") == "CREATED"
            and info.get("bundles")
            and all(
                {k: v for k, v in b.items() if v} == worker_bundle for b in info["bundles"].values()
            )
        ]

    class Release(Callback):
        def _check(self, trials, trial) -> None:
            if any(t.status == "RUNNING" and t is not trial for t in trials):
                return
            deadline = _time.monotonic() + grace_s  # Ray Train's own cleanup goes first
            while (found := leftovers()) and _time.monotonic() < deadline:
                _time.sleep(0.25)
            if not found:
                return
            from glue.runtime import remove_placement_groups

            remove_placement_groups(found)
            log.info(
                "removed %d placement group(s) left by trial %s's training run",
                len(found),
                trial.trial_id,
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._check(trials, trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._check(trials, trial)

    return Release()


def _trial_table(grid, max_epochs: int) -> list[dict[str, Any]]:
    """One row per trial: id, outcome, epochs run, best validation macro-F1, values.

    Outcomes: completed (every epoch), stopped_early (ASHA ended it), failed (an error),
    unfinished (pending or paused: the search was interrupted)."""
    # Trial statuses are only on the experiment analysis behind the grid.
    rows = []
    for res, trial in zip(grid, private_api.tune_trials(grid)):
        status = trial.status
        metrics = res.metrics or {}
        epochs = int(metrics.get("training_iteration", 0))
        if status == "ERROR":
            outcome = "failed"
        elif status != "TERMINATED":
            outcome = "unfinished"
        else:
            # Early stopping on validation (patience) is the trial finishing, not ASHA.
            done = epochs >= max_epochs or metrics.get("converged")
            outcome = "completed" if done else "stopped_early"
        rows.append(
            {
                "trial_id": trial.trial_id,
                "outcome": outcome,
                "epochs": epochs,
                "val_macro_f1": metrics.get("best_val_macro_f1"),
                "val_score": metrics.get("best_val_score"),
                **_sampled(res.config or {}),
            }
        )
    return rows
