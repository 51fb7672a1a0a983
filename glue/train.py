"""Distributed training with Ray Train: the one trainer builder that plain training and
Tune share, the per-worker loop, and the driver that evaluates and registers the result.

Data: the feature table's ``train`` rows are shared out between the workers, ``val`` is
read whole by every worker (so each worker computes the same validation metrics and rank 0
reports them). A table of up to ``DRIVER_READ_BYTES`` (any feature table of a few thousand
clips) is read by the driver and put in the object store once; every worker draws the same
shuffle each epoch and takes its own rows of it by rank
(:func:`avarnet.training.table_batches`), so that N workers step through exactly the
global batches of one process. A larger table streams in through Ray Data
(``read_parquet``, a streaming split per epoch). Batches are padded with masks
(:func:`avarnet.batching.pad_batch`).

Checkpoints: every epoch rank 0 writes the current weights, the optimiser state and the
best weights so far (by validation macro-F1) to ``<storage>/<run>/epochs`` (atomically),
then reports it to Ray Train. A worker failure restarts the loop
(``FailureConfig(max_failures)``) from the newest checkpoint written there, which may be
newer than the last one Ray's controller had registered when the worker died; the final
checkpoint carries the best model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avarnet.config import Config, config_to_dict
from avarnet.features import table as ft
from avarnet.features.spec import FeatureSpec
from glue.runtime import warn_if_unplaceable

__all__ = [
    "TrainingDataError",
    "build_trainer",
    "check_training_data",
    "model_kwargs",
    "train_loop_per_worker",
]


class TrainingDataError(ValueError):
    """The feature table cannot be trained on (reported before any training starts)."""


@dataclass(frozen=True)
class DataFacts:
    """What the driver learns from the feature table before training."""

    labels: list[str]
    multilabel: bool
    split_counts: dict[str, int]
    spec: FeatureSpec

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for a Tune trial's config)."""
        return {
            "labels": self.labels,
            "multilabel": self.multilabel,
            "split_counts": self.split_counts,
            "spec": self.spec.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataFacts:
        return cls(
            data["labels"],
            data["multilabel"],
            data["split_counts"],
            FeatureSpec.from_dict(data["spec"]),
        )


def model_kwargs(
    cfg: Config, spec: FeatureSpec, n_classes: int, normal_index: int | None, multilabel: bool
) -> dict:
    """Keyword arguments for ``create_model(cfg.model.name, **kwargs)``."""
    kwargs: dict[str, Any] = {
        "audio_dim": spec.audio_dim,
        "visual_dim": spec.visual_dim,
        "num_classes": n_classes,
        "fusion": cfg.model.fusion,
        "modality_dropout": cfg.model.modality_dropout,
        "normal_index": normal_index,
        "multilabel": multilabel,
    }
    for key in ("num_stages", "num_layers", "num_filters", "dropout", "pooling"):
        value = getattr(cfg.model, key)
        if value is not None:
            kwargs[key] = value
    return kwargs


def check_training_data(
    features_dir: str | os.PathLike, expected_spec: FeatureSpec | None = None
) -> DataFacts:
    """Refuse, with a clear message, what cannot train: another FeatureSpec, an empty or
    single-class training split, validation/test labels unseen in training, NaN features."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from avarnet.features.spec import FeatureSpecMismatch

    spec = ft.read_spec(features_dir)
    if expected_spec is not None:
        try:
            expected_spec.check_compatible(spec)
        except FeatureSpecMismatch as err:
            raise FeatureSpecMismatch(
                err.differences,
                f"{features_dir}: features were extracted with another FeatureSpec than the "
                "model's",
            ) from None
    parts = ft.part_files(features_dir)
    if not parts:
        raise TrainingDataError(f"{features_dir}: feature table has no part files")
    split_counts: dict[str, int] = {}
    labels_by_split: dict[str, set[str]] = {}
    multilabel = False
    for part in parts:
        t = pq.read_table(part, columns=["split", "labels", "audio", "visual"])
        for col in ("audio", "visual"):
            values = t.column(col).combine_chunks().values.values
            if len(values) and pc.any(pc.is_nan(values)).as_py():
                raise TrainingDataError(f"{part}: NaN values in the {col} features")
        for split, labels in zip(t.column("split").to_pylist(), t.column("labels").to_pylist()):
            split_counts[split] = split_counts.get(split, 0) + 1
            labels_by_split.setdefault(split, set()).update(labels)
            multilabel = multilabel or len(labels) > 1
    train_labels = labels_by_split.get("train", set())
    if split_counts.get("train", 0) == 0:
        raise TrainingDataError(f"{features_dir}: the training split is empty ({split_counts})")
    if len(train_labels) < 2:
        raise TrainingDataError(
            f"{features_dir}: the training split has a single class ({sorted(train_labels)}); "
            "a classifier needs at least two"
        )
    if not split_counts.get("test") and not split_counts.get("val"):
        raise TrainingDataError(
            f"{features_dir}: no test or val clips to evaluate on ({split_counts}); give the "
            "manifest a split column or more clips per class"
        )
    for split in ("val", "test"):
        unseen = labels_by_split.get(split, set()) - train_labels
        if unseen:
            raise TrainingDataError(
                f"{features_dir}: {split} labels {sorted(unseen)} never occur in the training split"
            )
    return DataFacts(sorted(train_labels), multilabel, split_counts, spec)


# ----------------------------------------------------------------------------- worker side
class _CachedShard:
    """A worker's dataset shard, read through Ray Data in the first epoch and kept in
    memory (up to ``max_bytes``; 0 disables) for the next ones: a feature table is small
    (T x D floats per clip), and re-running the streaming split every epoch costs more
    than a small model's epoch. Later epochs shuffle the whole cached shard."""

    def __init__(self, shard, max_bytes: int):
        self.shard = shard
        self.max_bytes = max_bytes
        self.table = None

    def batches(self, batch_size: int, *, seed: int, shuffle: bool = True):
        if self.shard is None:
            return
        if self.table is not None:
            n = self.table.num_rows
            order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
            for i in range(0, n, batch_size):
                yield self.table.take(order[i : i + batch_size])
            return
        import pyarrow as pa

        kwargs = {}
        if shuffle:
            kwargs = {"local_shuffle_buffer_size": batch_size * 4, "local_shuffle_seed": seed}
        kept: list | None = [] if self.max_bytes > 0 else None
        size = 0
        for table in self.shard.iter_batches(
            batch_size=batch_size, batch_format="pyarrow", **kwargs
        ):
            if kept is not None:
                size += table.nbytes
                if size <= self.max_bytes:
                    kept.append(table)
                else:
                    kept = None  # too big: stream every epoch
            yield table
        if kept is not None:  # read to the end and small enough: keep it
            self.table = (
                pa.concat_tables(kept) if kept else pa.table({"label": pa.array([], pa.string())})
            )


class _TableShard:
    """A worker's rows of a table in memory: its share of every epoch's shuffle, by rank
    (:func:`avarnet.training.table_batches`); the same ``batches`` as :class:`_CachedShard`."""

    def __init__(self, table, rank: int = 0, world_size: int = 1):
        self.table, self.rank, self.world_size = table, rank, world_size

    def batches(self, batch_size: int, *, seed: int, shuffle: bool = True):
        from avarnet.training import table_batches

        return table_batches(
            self.table,
            batch_size,
            seed=seed if shuffle else None,
            rank=self.rank,
            world_size=self.world_size,
        )


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train loop (runs on every worker): what is Ray's — the dataset shards, the
    checkpoints a restarted worker resumes from, the reports. The optimisation itself is
    :mod:`avarnet.training`'s. ``config`` is plain data (see :func:`build_trainer`);
    ``config["epoch_hook"]``, when set, is called with each epoch number before it runs
    (tests inject worker failures there)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from avarnet import training as T
    from avarnet.models import create_model
    from glue.runtime import quiet_driver

    quiet_driver()  # this worker's Ray Data and Ray Train INFO lines would reach the driver
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    threads = config.get("threads")
    if threads is not None:
        torch.set_num_threads(threads or os.cpu_count() or 1)
    recipe = T.Recipe.from_dict(config["recipe"])
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed + 7919 * rank)
    model = create_model(config["model_name"], **config["model_kwargs"])
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optim = T.make_optimizer(model, recipe)
    start_epoch, best = 0, T.BestTracker(recipe.patience)
    with _resume_checkpoint(config["checkpoint_root"], ray.train.get_checkpoint()) as d:
        if d is not None:
            start_epoch, best = load_checkpoint(d, model, optim, device, recipe.patience)
    # train.batch_size is the global batch: N workers take 1/N of it each, so a step sees
    # as many clips (and the learning rate means the same) whatever the number of workers.
    world = ctx.get_world_size()
    per_worker_batch = max(1, recipe.batch_size // world)
    if config.get("tables") is not None:  # a small table: in the object store, or as is
        tables = config["tables"]
        local = not isinstance(tables[0], ray.ObjectRef)  # Ray Train's local mode
        train_table, val_table = tables if local else ray.get(tables)
        train_data = _TableShard(train_table, rank, world)
        val_data = _TableShard(val_table)  # every worker validates on all of it
    else:  # a large one, through Ray Data
        cache_bytes = int(config.get("cache_mb", 0) * 2**20)
        train_data = _CachedShard(ray.train.get_dataset_shard("train"), cache_bytes)
        val_data = _CachedShard(ray.train.get_dataset_shard("val"), cache_bytes)
    hook = config.get("epoch_hook")
    for epoch in range(start_epoch, recipe.epochs):
        if hook is not None:
            hook(epoch)
        metrics = T.run_epoch(
            model,
            train_data.batches(per_worker_batch, seed=recipe.seed + epoch),
            val_data.batches(recipe.batch_size, seed=0, shuffle=False),
            optim,
            recipe,
            best,
            epoch=epoch,
            labels=config["labels"],
            multilabel=config["multilabel"],
            rng=rng,
            device=device,
        )
        _report_epoch(config, rank, epoch, metrics, model, optim, best)
        if best.should_stop(epoch):  # early stopping: every rank sees the same metrics
            break


def _report_epoch(config: dict, rank: int, epoch: int, metrics, model, optim, best) -> None:
    """Rank 0 logs the epoch to MLflow and writes its checkpoint (atomically, before the
    report: see :func:`write_checkpoint`); every rank reports to Ray Train."""
    import ray.train

    checkpoint = None
    if rank == 0:
        if config.get("tracking_uri") and config.get("run_id"):
            from glue.tracking import log_epoch

            log_epoch(config["tracking_uri"], config["run_id"], metrics, step=epoch)
        path = write_checkpoint(
            config["checkpoint_root"],
            epoch,
            checkpoint_files(model, optim, best),
            checkpoint_state(config, epoch, best),
        )
        checkpoint = ray.train.Checkpoint.from_directory(str(path))
    ray.train.report(metrics, checkpoint=checkpoint)
    if rank == 0:
        prune_checkpoints(config["checkpoint_root"], keep=2)


def checkpoint_files(model, optim, best) -> dict[str, Any]:
    """What a checkpoint holds: current weights and optimiser state (to resume), and the
    best weights so far (the model it becomes)."""
    return {
        "model.pt": _unwrap(model).state_dict(),
        "optim.pt": optim.state_dict(),
        "best_model.pt": best.state,
    }


def checkpoint_state(config: dict, epoch: int, best) -> dict[str, Any]:
    return {"epoch": epoch, "best": best.to_dict(), **{k: config[k] for k in _ARTIFACT_KEYS}}


def load_checkpoint(d: Path, model, optim, device, patience: int | None):
    """Restore a checkpoint folder into ``model`` and ``optim``; returns the epoch to go on
    from and the :class:`avarnet.training.BestTracker` it recorded."""
    import torch

    from avarnet.training import BestTracker

    _unwrap(model).load_state_dict(torch.load(d / "model.pt", map_location=device))
    optim.load_state_dict(torch.load(d / "optim.pt", map_location=device))
    state = json.loads((d / "state.json").read_text())
    best_state = torch.load(d / "best_model.pt", map_location="cpu")
    return state["epoch"] + 1, BestTracker.from_dict(state["best"], patience, best_state)


def model_config(cfg: Config, facts: DataFacts) -> dict[str, Any]:
    """What builds the model and what its checkpoints record: ``model_name``,
    ``model_kwargs``, ``labels``, ``multilabel``."""
    from avarnet.models import create_model
    from avarnet.predictor import find_normal_label

    labels = facts.labels
    normal = find_normal_label(labels)
    kwargs = model_kwargs(
        cfg, facts.spec, len(labels), labels.index(normal) if normal else None, facts.multilabel
    )
    # Every constructor argument, the preset's included: an artifact rebuilds the same
    # model even after a preset's defaults change.
    kwargs = create_model(cfg.model.name, **kwargs).config["kwargs"]
    return {
        "model_name": cfg.model.name,
        "model_kwargs": kwargs,
        "labels": labels,
        "multilabel": facts.multilabel,
    }


def write_checkpoint(root: str, epoch: int, files: dict[str, Any], state: dict) -> Path:
    """Write an epoch's checkpoint to ``root/checkpoint_<epoch>`` atomically (a temporary
    folder renamed when complete) and return its path.

    This, not Ray Train's record, is what a restarted worker resumes from: Ray registers a
    reported checkpoint only when its controller polls the worker, so a worker killed soon
    after ``ray.train.report`` (a lost node, an OOM kill) can take the last one or two
    reports with it, and Ray would restart from an older checkpoint or from scratch.
    ``root`` is under the run's storage path, so on a cluster it is shared storage too.
    """
    import torch

    final = Path(root) / f"checkpoint_{epoch:06d}"
    tmp = Path(root) / f".{final.name}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for name, obj in files.items():
        torch.save(obj, tmp / name)
    (tmp / "state.json").write_text(json.dumps(state))  # last: its presence means complete
    if final.exists():  # the same epoch written by an earlier attempt
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def prune_checkpoints(root: str, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (an in-process run's Ray record points at the
    newest, so it must survive)."""
    for old in sorted(Path(root).glob("checkpoint_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _resume_checkpoint(root: str, ray_checkpoint):
    """The folder to resume from: the newest complete checkpoint under ``root``, or Ray's
    latest registered checkpoint when it is newer (or ``root`` is empty); ``None`` for a
    fresh start."""

    def epoch_of(d: Path) -> int:
        return json.loads((d / "state.json").read_text())["epoch"]

    own = [d for d in sorted(Path(root).glob("checkpoint_*")) if (d / "state.json").exists()]
    if ray_checkpoint is None:
        yield own[-1] if own else None
        return
    with ray_checkpoint.as_directory() as d:
        registered = Path(d)
        if own and epoch_of(own[-1]) >= epoch_of(registered):
            yield own[-1]
        else:
            yield registered


# What a checkpoint records so that it can become a model artifact on its own.
_ARTIFACT_KEYS = ("model_name", "model_kwargs", "labels", "multilabel")


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


# ----------------------------------------------------------------------------- driver side
# A feature table up to this much Parquet is read by the driver and put in the object
# store as it is; a larger one is read by Ray Data's own tasks.
DRIVER_READ_BYTES = 1 << 30
SPLITS = ("train", "val")


def is_small_table(features_dir: Path, driver_read_bytes: int = DRIVER_READ_BYTES) -> bool:
    """Whether the driver reads the table itself (see the module's docstring)."""
    return sum(p.stat().st_size for p in ft.part_files(features_dir)) <= driver_read_bytes


def feature_tables(features_dir: Path, *, local: bool = False) -> list:
    """A small table's train and val rows, put in the object store once (their refs); or,
    ``local`` (Ray Train's local mode, the loop in this process), the tables themselves."""
    from avarnet.training import read_split_tables

    tables = list(read_split_tables(features_dir, SPLITS).values())
    if local:
        return tables
    import ray

    return [ray.put(t) for t in tables]


def trains_without_ray(cfg: Config, features_dir: str | os.PathLike) -> bool:
    """``train.workers=0`` on a small table: Ray Train's local mode runs the loop in this
    process, and the driver reads the table itself, so training needs no Ray at all (a Ray
    start and stop, 5-6.5 s here, saved)."""
    features_dir = Path(features_dir)
    return (
        cfg.train.workers == 0
        and features_dir.is_dir()
        and bool(ft.part_files(features_dir))
        and is_small_table(features_dir, DRIVER_READ_BYTES)
    )


def feature_datasets(features_dir: Path) -> dict[str, Any]:
    """A large table's train and val splits as materialised Ray Datasets (read and filtered
    by Ray Data's tasks). Split before materialising: the per-epoch split execution then
    has no operator that needs a CPU of its own (which a full cluster, e.g. a Tune
    trial's, may not have)."""
    import ray.data
    from ray.data.expressions import col

    from avarnet.training import COLUMNS

    files = [str(p) for p in ft.part_files(features_dir)]
    table = ray.data.read_parquet(files).select_columns(list(COLUMNS))
    return {s: table.filter(expr=col("split") == s).materialize() for s in SPLITS}


def build_trainer(
    cfg: Config,
    features_dir: str | os.PathLike,
    *,
    facts: DataFacts | None = None,
    storage_path: str | os.PathLike | None = None,
    name: str | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    callbacks: list | None = None,
    loop_overrides: dict[str, Any] | None = None,
):
    """The one place a ``TorchTrainer`` is built (plain training and every Tune trial).

    ``loop_overrides`` replaces entries of the loop config (Tune puts its sampled
    hyperparameters there). ``tracking_uri``/``run_id``: rank 0 logs per-epoch metrics there.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from avarnet.training import Recipe

    features_dir = Path(features_dir).resolve()
    facts = facts or check_training_data(features_dir)
    loop_config: dict[str, Any] = {
        **model_config(cfg, facts),
        "recipe": Recipe.from_config(cfg.train).to_dict(),
        "threads": cfg.train.threads_per_worker,
        "cache_mb": cfg.train.cache_mb,
        "tracking_uri": tracking_uri,
        "run_id": run_id,
    }
    loop_config.update(loop_overrides or {})
    run_name = name or f"train-{int(time.time())}"
    storage = Path(storage_path or Path(cfg.output_dir) / "ray_results").resolve()
    # Every epoch's checkpoint, written by rank 0 before it reports (see write_checkpoint).
    loop_config["checkpoint_root"] = str(storage / run_name / "epochs")
    # Reading a small table through Ray Data's tasks took 7-21 s of start-up on 2 CPUs for
    # 100 clips (more than a small model's whole training), and its per-epoch streaming
    # split another 2.6-5.7 s and an actor of its own; the driver reads it in 0.3 s.
    datasets = None
    workers = cfg.train.workers
    if is_small_table(features_dir, DRIVER_READ_BYTES):
        loop_config["tables"] = feature_tables(features_dir, local=workers == 0)
    else:
        datasets = feature_datasets(features_dir)
    use_gpu = cfg.train.gpus_per_worker > 0
    resources = {"CPU": cfg.train.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.train.gpus_per_worker
    if workers:  # (local mode trains here, wherever this process is)
        warn_if_unplaceable("training workers", cfg.train.worker_labels, resources)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            label_selector=dict(cfg.train.worker_labels) or None,
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]) if datasets else None,
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or [],
            # Warnings only: per-epoch report and checkpoint lines would drown the output.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )


def artifact_from_checkpoint(
    checkpoint_dir: str | os.PathLike, spec: FeatureSpec, cfg: Config, out_dir: str | os.PathLike
) -> tuple[Path, dict]:
    """Turn a training checkpoint (its best weights) into a model artifact folder."""
    import torch

    from avarnet.predictor import save_artifact

    d = Path(checkpoint_dir)
    state = json.loads((d / "state.json").read_text())
    best = torch.load(d / "best_model.pt", map_location="cpu")
    path = save_artifact(
        out_dir,
        model_name=state["model_name"],
        model_kwargs=state["model_kwargs"],
        state_dict=best,
        labels=state["labels"],
        feature_spec=spec,
        multilabel=state["multilabel"],
        metrics={
            "best_val_macro_f1": state["best"]["val_macro_f1"],
            "best_epoch": state["best"]["epoch"],
            "epochs_run": state["epoch"] + 1,
        },
        config=config_to_dict(cfg),
    )
    return path, state


def run_training(
    cfg: Config,
    features_dir: str | os.PathLike,
    *,
    tracking_uri: str,
    parent_run_id: str | None = None,
    run_name: str = "train",
    loop_overrides: dict[str, Any] | None = None,
    register: bool = True,
    facts: DataFacts | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Check the data (unless ``facts`` from :func:`check_training_data` are given), fit
    with Ray Train, evaluate the best model on the test split, log everything to one MLflow
    run and register the model. Ray must be initialised."""
    from glue import tracking

    features_dir = Path(features_dir).resolve()
    facts = facts or check_training_data(features_dir)
    out_root = Path(cfg.output_dir).resolve()
    t0 = time.perf_counter()
    with tracking.start_run(
        tracking_uri,
        cfg.tracking.experiment,
        run_name,
        parent_run_id=parent_run_id,
        tags={"avarnet.stage": "train"},
    ) as run:
        run.log_config(cfg)
        run.log_params(
            {
                "features_dir": str(features_dir),
                "labels": ",".join(facts.labels),
                "splits": facts.split_counts,
            }
        )
        trainer = build_trainer(
            cfg,
            features_dir,
            facts=facts,
            tracking_uri=tracking_uri,
            run_id=run.run_id,
            name=f"train-{run.run_id[:12]}",
            loop_overrides=loop_overrides,
        )
        with tracking.epoch_progress(run, cfg.train.epochs, enabled=progress):
            result = trainer.fit()
        if result.error is not None:
            raise result.error
        model_dir = out_root / "models" / run.run_id
        with result.checkpoint.as_directory() as d:
            artifact, state = artifact_from_checkpoint(d, facts.spec, cfg, model_dir)
        report = evaluate_and_log(run, artifact, features_dir, facts, model_dir / "eval")
        run.log_metrics({"train_wall_seconds": time.perf_counter() - t0})
        model_uri = (
            tracking.register_model(run, artifact, cfg.tracking.registered_model)
            if register
            else str(artifact)
        )
        return _training_result(cfg, run, model_uri, artifact, state, report, tracking_uri)


def _training_result(cfg, run, model_uri, artifact, state, report, tracking_uri) -> dict:
    """What :func:`run_training` returns."""
    best = state["best"]
    return {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "run_id": run.run_id,
        "model_uri": model_uri,
        "artifact_dir": str(artifact),
        "best_epoch": best["epoch"],
        "best_val_macro_f1": best["val_macro_f1"],
        "best_val_score": best.get("score", best["val_macro_f1"]),
        "epochs_run": state["epoch"] + 1,
        "seed": cfg.train.seed,
        "report": report,
        "tracking_uri": tracking_uri,
    }


def evaluate_and_log(run, artifact: Path, features_dir: Path, facts: DataFacts, out: Path):
    """Evaluate a model artifact on the test split (val without one), log the metrics,
    the confusion matrix and the report to ``run``, and write the report to ``out``."""
    from avarnet.evaluation import evaluate
    from avarnet.predictor import Predictor

    eval_split = "test" if facts.split_counts.get("test") else "val"
    test = ft.read_features(features_dir, splits=[eval_split])
    report = evaluate(Predictor.from_dir(artifact), test, out_dir=out)
    report["split"] = eval_split
    run.log_metrics({f"test_{k}": v for k, v in report.items() if isinstance(v, float)})
    run.log_artifact(report["confusion_matrix_png"], "eval")
    run.log_dict(report, "eval/report.json")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


# Metrics summarised over seeds (those a report has: the XD-Violence and segment APs only
# where the data has frame-level ground truth).
SEED_METRICS = (
    "accuracy",
    "macro_f1",
    "xd_ap",
    "xd_average_precision",
    "segment_ap_auc",
    "segment_average_precision",
    "best_val_macro_f1",
)


def summarise_seeds(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std", "values"}}`` over per-seed results; ``std`` is the sample
    standard deviation (ddof=1; 0 for one seed)."""
    out: dict[str, dict[str, Any]] = {}
    for key in SEED_METRICS:
        values = [r["report"].get(key, r.get(key)) for r in results]
        if any(v is None for v in values):
            continue
        arr = np.asarray(values, dtype=np.float64)
        std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
        out[key] = {"mean": float(arr.mean()), "std": std, "values": [float(v) for v in arr]}
    return out


def _log_seeds(parent, seeds: list[int], results: list[dict]):
    """Log the per-seed table and every metric's mean and std to the parent run; returns
    the seed best on validation (the first on a tie), the table and the summary."""
    summary = summarise_seeds(results)
    for key, stats in summary.items():
        parent.log_metrics({f"{key}_mean": stats["mean"], f"{key}_std": stats["std"]})
    chosen = max(results, key=lambda r: (r["best_val_score"], -seeds.index(r["seed"])))
    parent.log_params({"seeds": seeds, "selected_seed": chosen["seed"], "selected_on": "val"})
    per_seed = [
        {k: r[k] for k in ("seed", "accuracy", "macro_f1", "best_val_macro_f1", "run_id")}
        for r in results
    ]
    parent.log_dict({"per_seed": per_seed, "summary": summary}, "seeds.json")
    return chosen, per_seed, summary


def run_training_seeds(
    cfg: Config,
    features_dir: str | os.PathLike,
    *,
    tracking_uri: str,
    parent_run_id: str | None = None,
    facts: DataFacts | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """:func:`run_training` once per seed of ``train.seeds`` (just ``train.seed`` when it
    is unset), each a child run of one ``train-seeds`` MLflow run that holds every metric's
    mean and standard deviation. The model registered is the seed's best on validation
    (its best epoch's validation score), never on test; the result says so
    (``selected_on: "val"``) and carries the selected seed's own metrics at the top level.
    """
    from avarnet.config import apply_overrides
    from glue import tracking

    seeds = list(cfg.train.seeds or [cfg.train.seed])
    facts = facts or check_training_data(features_dir)
    if len(seeds) == 1:
        one = apply_overrides(cfg, [f"train.seed={seeds[0]}"])
        res = run_training(
            one,
            features_dir,
            tracking_uri=tracking_uri,
            parent_run_id=parent_run_id,
            facts=facts,
            progress=progress,
        )
        return {**res, "seeds": seeds, "selected_on": "val", "per_seed": None}
    with tracking.start_run(
        tracking_uri,
        cfg.tracking.experiment,
        "train-seeds",
        parent_run_id=parent_run_id,
        tags={"avarnet.stage": "train"},
    ) as parent:
        parent.log_config(cfg)
        results = []
        for seed in seeds:
            results.append(
                run_training(
                    apply_overrides(cfg, [f"train.seed={seed}"]),
                    features_dir,
                    tracking_uri=tracking_uri,
                    parent_run_id=parent.run_id,
                    run_name=f"train-seed{seed}",
                    register=False,
                    facts=facts,
                    progress=progress,
                )
            )
        chosen, per_seed, summary = _log_seeds(parent, seeds, results)
        model_uri = tracking.register_model(
            parent, chosen["artifact_dir"], cfg.tracking.registered_model
        )
        return {
            **chosen,
            "model_uri": model_uri,
            "run_id": parent.run_id,
            "seed_run_id": chosen["run_id"],
            "seeds": seeds,
            "selected_on": "val",
            "selected_seed": chosen["seed"],
            "per_seed": per_seed,
            "summary": summary,
        }
