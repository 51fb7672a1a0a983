"""Online scoring with Ray Serve: the application and its arguments.

Three deployments, each scaled on its own::

    HTTP ─► Ingress (FastAPI: /, /v1/score, /v1/health, /v1/model, /docs)   serve/ingress.py
              ├─► Encoder     decode the upload + Wav2Vec2 + MobileViT   serve/deployments.py
              └─► Classifier  fusion + MTCN through the shared Predictor

The Encoder is built from the FeatureSpec saved with the model, so online features are
computed exactly as the training features were. ``build_app(args)`` is the entry point
for ``serve run serve.app:build_app model=...``, ``serve deploy serve/config.yaml`` and
``avarnet serve``; a registry alias (``models:/avarnet@champion``) is resolved once, to a
concrete version, so that every replica loads the same model even if the alias moves.
Its arguments (:class:`AppArgs`) are the project's ``serve.*`` settings
(:class:`avarnet.config.ServeConfig`). Request limits and replica fitting:
:mod:`serve.limits`; the HTTP shapes: :mod:`serve.schemas`.
"""

import dataclasses
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray import serve

from avarnet.config import Config, ServeConfig, config_from_dict
from serve.deployments import Classifier, Encoder
from serve.ingress import Ingress, api
from serve.limits import INGRESS_CPUS, ClipLimits, fit_resources
from serve.schemas import ModelRef

# `api` (the FastAPI app, with the routes: `api.openapi()` is the service's schema) is
# named here for the batch-scoring tests, which check their answers against that schema.
__all__ = ["AppArgs", "api", "build_app", "check_encodable", "resolve_model"]

# ServeConfig fields that are Serve's HTTP options (serve.start), not the application's.
HTTP_OPTIONS = ("host", "port")
# Per-deployment settings that are not knobs of the project's config; serve/config.yaml's
# `deployments:` section can still override them (Serve's own per-deployment options).
INGRESS_MAX_ONGOING, INGRESS_TARGET_ONGOING = 64, 16
CLASSIFIER_MAX_ONGOING, CLASSIFIER_TARGET_ONGOING = 16, 4
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class AppArgs(ServeConfig):
    """``build_app`` arguments (``serve run serve.app:build_app key=value ...``): every
    :class:`~avarnet.config.ServeConfig` setting but ``host`` and ``port`` (see its
    comments; ``model`` is accepted for ``model_uri``), and where the registry is. ``host``
    and ``port`` are inherited with the rest but are no arguments: :func:`serve.deploy.deploy`
    and serve/config.yaml's ``http_options`` set them.

    Attributes:
        tracking_uri: the MLflow store holding the registry; default: ``MLFLOW_TRACKING_URI``
            or the project's embedded sqlite store under ``output_dir``.
        output_dir: where the embedded store lives when ``tracking_uri`` is not given.
    """

    tracking_uri: str | None = None
    output_dir: str = Config().output_dir

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> "AppArgs":
        """From ``serve run`` strings, YAML values or Python values, type-checked by the
        config's own coercion (``serve.*`` errors name the setting); ``None`` values are
        left at their defaults."""
        args = {("model_uri" if k == "model" else k): v for k, v in args.items() if v is not None}
        known = [f.name for f in dataclasses.fields(cls) if f.name not in HTTP_OPTIONS]
        unknown = sorted(set(args) - set(known))
        if unknown:
            names = sorted(["model", *known])
            raise ValueError(f"unknown build_app argument(s) {unknown}; known: {names}")
        hints = typing.get_type_hints(cls)
        values = {k: _parse(v, hints[k]) for k, v in args.items()}
        own = {k: values.pop(k) for k in ("tracking_uri", "output_dir") if k in values}
        settings = config_from_dict({"serve": values}).serve
        return cls(**asdict(settings), **{k: str(v) for k, v in own.items()})

    def limits(self) -> ClipLimits:
        return ClipLimits(self.max_clip_seconds, self.max_frame_pixels, self.max_segments)


def _parse(value: Any, tp: Any) -> Any:
    """``serve run`` passes every argument as a string: read it as YAML unless the field
    is a string (a path or a URI stays as written)."""
    if not isinstance(value, str) or str in typing.get_args(tp) or tp is str:
        return value
    if tp is bool and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    import yaml

    return yaml.safe_load(value)


def resolve_model(model: str, tracking_uri: str | None, output_dir: str) -> ModelRef:
    """Pin ``model`` (an alias moves; a version does not) and read its metadata (only
    ``model.json``: the replicas load the weights)."""
    from avarnet.config import TrackingConfig
    from avarnet.predictor import read_meta
    from glue import tracking

    if not model.startswith(("models:/", "runs:/")):
        folder = _project_path(model)
        meta = read_meta(folder)
        return ModelRef(str(folder), meta["model_name"], "local", model, tracking_uri, meta)
    uri = tracking_uri or tracking.resolve_tracking_uri(TrackingConfig(), _project_path(output_dir))
    if model.startswith("runs:/"):
        meta = tracking.read_model_meta(model, uri)
        return ModelRef(model, meta["model_name"], "run", model, uri, meta)
    info = tracking.model_version_info(model, uri)
    pinned = f"models:/{info['name']}/{info['version']}"
    meta = tracking.read_model_meta(pinned, uri)
    return ModelRef(pinned, info["name"], str(info["version"]), model, uri, meta)


def _project_path(path: str) -> Path:
    """Relative paths (config files, ``serve run``) are relative to the project's root,
    whatever the working directory of the process that builds the application."""
    from glue.runtime import project_root

    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(project_root()) / p


def check_encodable(ref: ModelRef) -> None:
    """Refuse a model whose FeatureSpec has no encoders here (features imported from
    external backbones, :mod:`avarnet.features.imported`): the service scores uploads."""
    from avarnet.config import ConfigError
    from avarnet.features.imported import encoder_problem

    problem = encoder_problem(ref.meta["feature_spec"])
    if problem:
        raise ConfigError(f"cannot serve {ref.uri}: {problem}")


def _actor_options(labels: dict[str, str], **resources: float) -> dict[str, Any]:
    """A replica's ``ray_actor_options``: its resources and, when given, the node labels
    it needs."""
    return {**resources, **({"label_selector": dict(labels)} if labels else {})}


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """The scoring application. ``args``: see :class:`AppArgs`."""
    a = fit_resources(AppArgs.from_dict(dict(args or {})))
    ref = resolve_model(a.model_uri, a.tracking_uri, a.output_dir)
    check_encodable(ref)
    limits = asdict(a.limits())
    encoder = Encoder.options(
        ray_actor_options=_actor_options(
            a.encoder_labels, num_cpus=a.encoder_cpus, num_gpus=a.encoder_gpus
        ),
        max_ongoing_requests=max(8, 2 * a.max_batch_size),
        autoscaling_config={
            "min_replicas": a.encoder_min_replicas,
            "max_replicas": a.encoder_max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": 2,
            "downscale_delay_s": 60,
        },
    ).bind(
        ref.meta["feature_spec"],
        threads=a.threads,
        max_batch_size=a.max_batch_size,
        batch_wait_timeout_s=a.batch_wait_timeout_s,
        limits=limits,
        upload_dir=a.upload_dir,
    )
    classifier = Classifier.options(
        ray_actor_options=_actor_options(a.classifier_labels, num_cpus=a.classifier_cpus),
        max_ongoing_requests=CLASSIFIER_MAX_ONGOING,
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": a.classifier_max_replicas,
            "target_ongoing_requests": CLASSIFIER_TARGET_ONGOING,
        },
    ).bind(asdict(ref), max_batch_size=a.classifier_max_batch_size)
    return Ingress.options(
        ray_actor_options={"num_cpus": INGRESS_CPUS},
        max_ongoing_requests=INGRESS_MAX_ONGOING,
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": a.ingress_max_replicas,
            "target_ongoing_requests": INGRESS_TARGET_ONGOING,
        },
    ).bind(
        encoder,
        classifier,
        asdict(ref),
        max_upload_mb=a.max_upload_mb,
        limits=limits,
        long_clip_seconds=a.long_clip_seconds,
        idle_timeout_s=a.upload_idle_timeout_s,
        upload_dir=a.upload_dir,
    )
