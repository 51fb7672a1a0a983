"""MLflow: the one module of the project that imports mlflow.

Embedded default: a sqlite store at ``<output_dir>/mlflow.db`` (absolute path, since Ray
workers and Tune trials run in other working directories) with artifacts beside it in
``<output_dir>/mlartifacts``. ``MLFLOW_TRACKING_URI`` or ``tracking.tracking_uri`` (e.g. a
tracking server for a cluster) take precedence.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Artifact downloads (Serve replicas, evaluation) would print a progress bar per model.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient as _MlflowClient  # noqa: E402

from avarnet.config import Config, TrackingConfig, config_to_dict

__all__ = [
    "RunLogger",
    "default_tracking_uri",
    "end_trial_run",
    "open_run",
    "reopen_run",
    "trial_run",
    "download_model",
    "read_model_meta",
    "log_epoch",
    "register_model",
    "resolve_tracking_uri",
    "start_run",
]


class MlflowClient:
    """``mlflow.tracking.MlflowClient`` whose every call completes before a Ctrl-C or a
    SIGTERM acts (:func:`glue.errors.signals_deferred`): one cut in the middle of a sqlite
    write would leave the store locked for the cleanup that ends the runs ``KILLED``."""

    def __init__(self, tracking_uri: str):
        self._client = _MlflowClient(tracking_uri)

    def __getattr__(self, name: str) -> Any:
        from glue.errors import signals_deferred

        if name.startswith("_"):  # not MLflow's (and no recursion before __init__ ran)
            raise AttributeError(name)
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with signals_deferred():
                return attr(*args, **kwargs)

        return call


def default_tracking_uri(output_dir: str | os.PathLike) -> str:
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(tracking: TrackingConfig, output_dir: str | os.PathLike) -> str:
    """Config value, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite store."""
    return (
        tracking.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or default_tracking_uri(output_dir)
    )


def _artifact_location(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return None


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri))
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class RunLogger:
    """A thin handle on one MLflow run (explicit run id, no global active run)."""

    def __init__(self, client: MlflowClient, run_id: str, tracking_uri: str):
        self.client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self._unwatch = None

    def watch_sigterm(self) -> RunLogger:
        """End this run ``KILLED`` as soon as the process gets SIGTERM (``ray job stop``
        kills the driver 3 s later, too soon to rely on the stack unwinding)."""
        from glue.errors import on_terminate

        self._unwatch = on_terminate(lambda: self.client.set_terminated(self.run_id, "KILLED"))
        return self

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    def log_params(self, params: dict) -> None:
        flat = {k: ("" if v is None else str(v)[:6000]) for k, v in _flatten(params).items()}
        existing = self.client.get_run(self.run_id).data.params
        fresh = [mlflow.entities.Param(k, v) for k, v in flat.items() if k not in existing]
        for i in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[i : i + 100])

    def log_config(self, cfg: Config) -> None:
        self.log_params(config_to_dict(cfg))
        self.log_dict(config_to_dict(cfg), "config.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        ts = int(time.time() * 1000)
        items = [
            mlflow.entities.Metric(k, float(v), ts, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_dict(self, data: dict | list, name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(p), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self.client.set_terminated(self.run_id, status)

    def ui_hint(self) -> str:
        """How to look at this run."""
        uri = self.tracking_uri
        if uri.startswith("sqlite:///"):
            return f"mlflow ui --backend-store-uri {uri}   (run {self.run_id})"
        return f"{uri}   (run {self.run_id})"


def open_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    *,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> RunLogger:
    """Create a run (RUNNING) and return its handle; end it with :meth:`RunLogger.end`."""
    client = MlflowClient(tracking_uri)
    exp_id = _experiment_id(client, experiment, tracking_uri)
    all_tags = {"mlflow.runName": run_name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    return RunLogger(client, run.info.run_id, tracking_uri).watch_sigterm()


@contextmanager
def start_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    *,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[RunLogger]:
    """Open a run; it ends FINISHED, KILLED on Ctrl-C, or FAILED (and re-raises) when the
    body raises."""
    logger = open_run(tracking_uri, experiment, run_name, parent_run_id=parent_run_id, tags=tags)
    try:
        yield logger
    except KeyboardInterrupt:
        logger.end("KILLED")
        raise
    except BaseException:
        logger.end("FAILED")
        raise
    logger.end("FINISHED")


def reopen_run(tracking_uri: str, run_id: str) -> RunLogger:
    """A handle on an existing run, set RUNNING again (a resumed search's parent run)."""
    client = MlflowClient(tracking_uri)
    client.update_run(run_id, status="RUNNING")
    return RunLogger(client, run_id, tracking_uri).watch_sigterm()


def _trial_runs(client: MlflowClient, parent_run_id: str, trial_id: str) -> list:
    exp_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs(
        [exp_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and "
            f"tags.`avarnet.trial_id` = '{trial_id}'"
        ),
    )


def trial_run(
    tracking_uri: str, experiment: str, parent_run_id: str, trial_id: str, run_name: str
) -> RunLogger:
    """The child run of a Tune trial: the existing one when a restored trial resumes (its
    epochs go on in the same run), else a new one."""
    client = MlflowClient(tracking_uri)
    existing = _trial_runs(client, parent_run_id, trial_id)
    if existing:
        return RunLogger(client, existing[0].info.run_id, tracking_uri)
    return open_run(
        tracking_uri,
        experiment,
        run_name,
        parent_run_id=parent_run_id,
        tags={"avarnet.trial_id": trial_id, "avarnet.stage": "tune-trial"},
    )


def end_trial_run(
    tracking_uri: str,
    parent_run_id: str,
    trial_id: str,
    outcome: str,
    best_val_macro_f1: float | None = None,
) -> None:
    """Close the child run of a Tune trial with its outcome: completed -> FINISHED,
    stopped_early -> KILLED, failed -> FAILED (tag ``avarnet.trial_outcome``)."""
    client = MlflowClient(tracking_uri)
    status = {"completed": "FINISHED", "stopped_early": "KILLED"}.get(outcome, "FAILED")
    for run in _trial_runs(client, parent_run_id, trial_id):
        client.set_tag(run.info.run_id, "avarnet.trial_outcome", outcome)
        if best_val_macro_f1 is not None:
            client.log_metric(run.info.run_id, "best_val_macro_f1", float(best_val_macro_f1))
        client.set_terminated(run.info.run_id, status)


@contextmanager
def epoch_progress(run: RunLogger, total: int, *, enabled: bool = True) -> Iterator[None]:
    """A progress bar of a training run's epochs, read from the epochs its rank-0 worker
    logs to this run (the driver sees no per-epoch result of Ray Train otherwise)."""
    import threading

    from glue import console

    if not enabled:
        yield
        return
    bar = console.progress_bar(total, "train", "epoch")
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(1.0):
            try:
                history = run.client.get_metric_history(run.run_id, "train_loss")
            except Exception:  # a busy store: try again next second
                continue
            done = len({m.step for m in history})
            if done != bar.n:
                bar.n = done
                bar.refresh()

    thread = threading.Thread(target=poll, name="avarnet-epoch-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


def log_epoch(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log one epoch's metrics to an existing run (called from the rank-0 training worker)."""
    RunLogger(MlflowClient(tracking_uri), run_id, tracking_uri).log_metrics(metrics, step=step)


def register_model(
    run: RunLogger, model_dir: str | os.PathLike, name: str, alias: str | None = None
) -> str:
    """Log an artifact folder under ``model/`` of the run and register it as a new version
    of ``name``. Returns ``models:/<name>/<version>``."""
    run.log_artifact(model_dir, "model")
    client = run.client
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # already registered
        client.create_registered_model(name)
    source = f"{client.get_run(run.run_id).info.artifact_uri}/model"
    version = client.create_model_version(name, source=source, run_id=run.run_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    run.set_tags({"avarnet.model_uri": f"models:/{name}/{version.version}"})
    return f"models:/{name}/{version.version}"


def set_alias(uri: str, alias: str, tracking_uri: str) -> str:
    """Point ``alias`` at the registered version ``uri`` (``models:/name/3``); returns it."""
    client = MlflowClient(tracking_uri)
    mv = _model_version(client, uri)
    client.set_registered_model_alias(mv.name, alias, mv.version)
    return f"models:/{mv.name}/{mv.version}"


def _model_version(client: MlflowClient, uri: str):
    """The registry entry of ``models:/name/3`` or ``models:/name@alias``."""
    ref = uri[len("models:/") :]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, version = ref.rsplit("/", 1)
    return client.get_model_version(name, version)


def download_model(
    uri: str, tracking_uri: str, dst: str | os.PathLike | None = None, only: str | None = None
) -> Path:
    """Resolve ``models:/name/3``, ``models:/name@alias`` or ``runs:/id/model`` to a local
    folder holding the model artifact (``only``: just that file of it, e.g. ``model.json``;
    then the returned path is the file)."""
    mlflow.set_tracking_uri(tracking_uri)
    if uri.startswith("models:/"):
        source = _model_version(MlflowClient(tracking_uri), uri).source
    elif uri.startswith("runs:/"):
        source = uri
    else:
        raise ValueError(f"{uri}: not an MLflow model URI (models:/..., runs:/...)")
    if only:
        source = f"{source.rstrip('/')}/{only}"
    dst = Path(dst) if dst else Path(tempfile.mkdtemp(prefix="avarnet-model-"))
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst))
    return Path(local)


def model_version_info(uri: str, tracking_uri: str) -> dict[str, Any]:
    """Name and version of a registry URI (for /v1/model and summaries)."""
    mv = _model_version(MlflowClient(tracking_uri), uri)
    return {"name": mv.name, "version": int(mv.version), "run_id": mv.run_id}


def write_json(data: Any, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, p)
    return p


def load_predictor(
    uri: str, tracking_uri: str | None, output_dir: str | os.PathLike, device: str = "cpu"
):
    """A Predictor from an artifact folder or a registry URI (resolved through MLflow)."""
    from avarnet.config import TrackingConfig
    from avarnet.predictor import Predictor

    resolved = tracking_uri or resolve_tracking_uri(TrackingConfig(), output_dir)
    # The weights are read into memory: the downloaded copy is removed afterwards.
    with tempfile.TemporaryDirectory(prefix="avarnet-model-") as tmp:
        return Predictor.load(
            uri, resolver=lambda u: download_model(u, resolved, dst=tmp), device=device
        )


def read_model_meta(uri: str, tracking_uri: str) -> dict[str, Any]:
    """The ``model.json`` of a registered or logged model (nothing else downloaded, and
    nothing left behind)."""
    from avarnet.predictor import META_FILE, read_meta

    with tempfile.TemporaryDirectory(prefix="avarnet-model-") as tmp:
        return read_meta(download_model(uri, tracking_uri, dst=tmp, only=META_FILE).parent)
