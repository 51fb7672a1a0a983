"""Online scoring with Ray Serve.

Three deployments, each scaled on its own::

    HTTP ─► Ingress (FastAPI: /, /v1/score, /v1/health, /v1/model, /docs)
              ├─► Encoder     decode the upload + Wav2Vec2 + MobileViT   (@serve.batch)
              └─► Classifier  fusion + MTCN through the shared Predictor  (@serve.batch)

The Encoder is built from the FeatureSpec saved with the model, so online features are
computed exactly as the training features were. ``build_app(args)`` is the entry point
for ``serve run serve.app:build_app model=...``, ``serve deploy serve/config.yaml`` and
``avarnet serve``; a registry alias (``models:/avarnet@champion``) is resolved once, to a
concrete version, so that every replica loads the same model even if the alias moves.

Uploads are written to a temporary file that the server names itself; the server never
opens a path that a client sends.
"""

import asyncio
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from avarnet.config import Config, ServeConfig

__all__ = ["AppArgs", "ScoreResponse", "build_app", "resolve_model"]

logger = logging.getLogger("ray.serve")
STATIC = Path(__file__).resolve().parent / "static"
API_VERSION = "v1"


# --------------------------------------------------------------------------- arguments

_SERVE = ServeConfig()  # the defaults of `serve.*` in the project's config


@dataclass
class AppArgs:
    """``build_app`` arguments (``serve run serve.app:build_app key=value ...``).

    Attributes:
        model: a registry URI (``models:/avarnet@champion``, ``models:/avarnet/3``) or a
            model artifact folder.
        tracking_uri: the MLflow store holding the registry; default: ``MLFLOW_TRACKING_URI``
            or the project's embedded sqlite store under ``output_dir``.
        output_dir: where the embedded store lives when ``tracking_uri`` is not given.
        max_upload_mb: larger uploads are refused with 413.
        encoder_cpus / encoder_gpus: per Encoder replica (GPUs: encoders run on CUDA).
        encoder_min_replicas / encoder_max_replicas: the Encoder's autoscaling range.
        classifier_cpus: per Classifier replica.
        max_batch_size: clips per Encoder batch (``@serve.batch``).
        batch_wait_timeout_s: how long a batch waits to fill (0: take what is queued; under
            load, requests queue while a batch runs, so batches still form).
        threads: torch threads per Encoder replica (0: its reserved CPUs, at least 1).
        target_ongoing_requests: the autoscaler's target per replica.
    """

    model: str = _SERVE.model_uri
    tracking_uri: str | None = None
    output_dir: str = Config().output_dir
    max_upload_mb: float = _SERVE.max_upload_mb
    encoder_cpus: float = _SERVE.encoder_cpus
    encoder_gpus: float = _SERVE.encoder_gpus
    encoder_min_replicas: int = 1
    encoder_max_replicas: int = _SERVE.encoder_max_replicas
    classifier_cpus: float = 0.5
    max_batch_size: int = 4
    batch_wait_timeout_s: float = 0.0
    threads: int = 0
    target_ongoing_requests: float = 1.0

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> "AppArgs":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown build_app argument(s) {unknown}; known: {sorted(known)}")
        out = cls()
        for key, value in args.items():
            if value is None:
                continue
            default = getattr(out, key)
            if isinstance(default, bool) or default is None:
                setattr(out, key, value)
            else:  # `serve run` passes every argument as a string
                setattr(out, key, type(default)(value))
        if out.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be > 0, got {out.max_upload_mb}")
        if not 1 <= out.encoder_min_replicas <= out.encoder_max_replicas:
            raise ValueError("need 1 <= encoder_min_replicas <= encoder_max_replicas")
        if out.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {out.max_batch_size}")
        return out


@dataclass
class ModelRef:
    """A model pinned for serving: where replicas load it from, and what it is."""

    load_from: str  # a concrete registry URI (models:/name/version) or an absolute folder
    name: str
    version: str
    uri: str  # what the operator asked for
    tracking_uri: str | None
    meta: dict[str, Any] = field(default_factory=dict)  # the artifact's model.json


def resolve_model(model: str, tracking_uri: str | None, output_dir: str) -> ModelRef:
    """Pin ``model`` (an alias moves; a version does not) and read its metadata (only
    ``model.json``: the replicas load the weights)."""
    from avarnet.config import TrackingConfig
    from avarnet.predictor import META_FILE, read_meta
    from workflows import tracking

    if not model.startswith(("models:/", "runs:/")):
        folder = _project_path(model)
        meta = read_meta(folder)
        return ModelRef(str(folder), meta["model_name"], "local", model, tracking_uri, meta)
    uri = tracking_uri or tracking.resolve_tracking_uri(TrackingConfig(), _project_path(output_dir))
    if model.startswith("runs:/"):
        meta = read_meta(tracking.download_model(model, uri, only=META_FILE).parent)
        return ModelRef(model, meta["model_name"], "run", model, uri, meta)
    info = tracking.model_version_info(model, uri)
    pinned = f"models:/{info['name']}/{info['version']}"
    meta = read_meta(tracking.download_model(pinned, uri, only=META_FILE).parent)
    return ModelRef(pinned, info["name"], str(info["version"]), model, uri, meta)


def _project_path(path: str) -> Path:
    """Relative paths (config files, ``serve run``) are relative to the project's root,
    whatever the working directory of the process that builds the application."""
    from workflows.runtime import project_root

    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(project_root()) / p


# --------------------------------------------------------------------------- errors


class MediaError(Exception):
    """An upload the encoder cannot use; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


_ERROR_TYPES = {
    400: "bad_request",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "undecodable_media",
    503: "unavailable",
}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "status": status,
                "type": _ERROR_TYPES.get(status, "error"),
                "message": message,
            }
        },
        status_code=status,
    )


def _public(reason: str, path: str) -> str:
    """A decoder's message without the server's temporary file name."""
    return reason.replace(f": '{path}'", "").replace(path, "<upload>")


# --------------------------------------------------------------------------- deployments


@serve.deployment(name="Encoder")  # resources and autoscaling: build_app, from AppArgs
class Encoder:
    """Decode an uploaded clip on the model's segment grid and encode it (Wav2Vec2 +
    MobileViT), several uploads per batch."""

    def __init__(
        self,
        spec: dict[str, Any],
        chunk_segments: int = 32,
        threads: int = 0,
        max_batch_size: int = 4,
        batch_wait_timeout_s: float = 0.0,
    ):
        import torch

        from avarnet.features.backbones import build_encoders
        from avarnet.features.spec import FeatureSpec

        if threads <= 0:  # as many threads as the replica reserved CPUs (at least one)
            import ray

            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
            threads = max(1, int(cpus))
        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoders = build_encoders(FeatureSpec.from_dict(spec), device=device)
        self.opts = self.encoders.spec.decode_options(chunk_segments=chunk_segments)
        self.encode.set_max_batch_size(max_batch_size)
        self.encode.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.tmp = Path(tempfile.mkdtemp(prefix="avarnet-serve-"))

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.0)
    async def encode(self, payloads: list[bytes]) -> list[dict[str, Any]]:
        # Off the event loop, so that the next batch can queue while this one runs.
        return await asyncio.to_thread(self._encode_batch, payloads)

    def _decode(self, data: bytes):
        from avarnet.data.decode import DecodeError, iter_chunks, probe

        fd, path = tempfile.mkstemp(suffix=".upload", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                info = probe(path)
            except DecodeError as err:
                raise MediaError(415, _public(err.reason, path)) from None
            try:
                return list(iter_chunks(path, self.opts, info=info))
            except DecodeError as err:
                raise MediaError(422, f"undecodable video: {_public(err.reason, path)}") from None
        finally:
            os.unlink(path)

    def _encode_batch(self, payloads: list[bytes]) -> list[dict[str, Any]]:
        from avarnet.data.decode import chunk_bounds

        t0 = time.perf_counter()
        decoded: list[Any] = []
        for data in payloads:
            try:
                decoded.append(self._decode(data))
            except MediaError as err:
                decoded.append(err)
            except Exception as err:  # a decoder crash on hostile input is still bad media
                decoded.append(MediaError(422, f"undecodable video: {type(err).__name__}"))
        t1 = time.perf_counter()
        chunks = [c for d in decoded if isinstance(d, list) for c in d]
        feats = iter(self.encoders.encode_chunks(chunks)) if chunks else iter(())
        t2 = time.perf_counter()
        ms = {"decode": 1e3 * (t1 - t0), "encode": 1e3 * (t2 - t1), "batch_size": len(payloads)}
        out = []
        for d in decoded:
            if isinstance(d, MediaError):
                out.append({"error": {"status": d.status, "message": d.message}})
                continue
            parts = [next(feats) for _ in d]
            bounds = chunk_bounds(d)
            out.append(
                {
                    "audio": np.concatenate([a for a, _ in parts]),
                    "visual": np.concatenate([v for _, v in parts]),
                    "has_audio": bool(d[0].has_audio),
                    "bounds_s": bounds,
                    "duration_s": float(d[0].info.duration_s),
                    "timings_ms": ms,
                }
            )
        return out


@serve.deployment(
    name="Classifier",
    max_ongoing_requests=16,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4},
    ray_actor_options={"num_cpus": 0.5},
)
class Classifier:
    """The fusion + MTCN model, through the same Predictor as batch inference."""

    def __init__(self, ref: dict[str, Any]):
        from workflows.tracking import load_predictor

        self.predictor = load_predictor(ref["load_from"], ref["tracking_uri"], ".")

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        preds = self.predictor.predict(
            [i["audio"] for i in items],
            [i["visual"] for i in items],
            [i["has_audio"] for i in items],
        )
        ms = 1e3 * (time.perf_counter() - t0)
        labels = self.predictor.labels
        return [
            {
                "label": p.label,
                "probabilities": {c: float(x) for c, x in zip(labels, p.probabilities)},
                "segment_scores": [float(s) for s in p.segment_scores],
                "segment_top_class": [labels[int(k)] for k in p.segment_top_class],
                "classify_ms": ms,
            }
            for p in preds
        ]


# --------------------------------------------------------------------------- HTTP API


class Segment(BaseModel):
    start_s: float = Field(description="segment start, seconds from the clip's start")
    end_s: float = Field(description="segment end (exclusive), seconds")
    anomaly_score: float = Field(description="1 - p(normal) for this segment", ge=0, le=1)
    top_class: str = Field(description="the most probable class of this segment")


class ModelId(BaseModel):
    name: str
    version: str
    uri: str = Field(description="what the service was asked to serve")


class Timings(BaseModel):
    upload: float
    decode: float
    encode: float
    classify: float
    total: float
    encoder_batch_size: int


class ScoreResponse(BaseModel):
    label: str = Field(description="the predicted class of the clip")
    probabilities: dict[str, float] = Field(description="class -> clip-level probability")
    segments: list[Segment]
    has_audio: bool = Field(description="false: the clip has no audio track (scored anyway)")
    duration_s: float
    model: ModelId
    timings_ms: Timings


class ModelInfo(BaseModel):
    name: str
    version: str
    uri: str
    model_name: str
    classes: list[str]
    normal_class: str | None
    multilabel: bool
    feature_spec: dict[str, Any]
    metrics: dict[str, Any]


class Health(BaseModel):
    status: str
    model: ModelId


class ErrorBody(BaseModel):
    status: int
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


api = FastAPI(
    title="avarnet",
    version=API_VERSION,
    description="Audio-visual anomaly recognition (AVAR-Net): upload a video clip, get its "
    "class, class probabilities and a per-segment anomaly timeline.",
)
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 503)}


@serve.deployment(
    name="Ingress",
    max_ongoing_requests=64,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
    ray_actor_options={"num_cpus": 0.1},
)
@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        encoder: DeploymentHandle,
        classifier: DeploymentHandle,
        ref: dict[str, Any],
        max_upload_mb: float,
    ):
        self.encoder = encoder
        self.classifier = classifier
        self.ref = ModelRef(**ref)
        self.max_bytes = int(max_upload_mb * 1024 * 1024)
        self.page = (STATIC / "index.html").read_text()

    def _model_id(self) -> dict[str, str]:
        return {"name": self.ref.name, "version": self.ref.version, "uri": self.ref.uri}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @api.get("/v1/health", response_model=Health)
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self._model_id()}

    @api.get("/v1/model", response_model=ModelInfo)
    async def model(self) -> dict[str, Any]:
        meta = self.ref.meta
        return {
            **self._model_id(),
            "model_name": meta["model_name"],
            "classes": meta["labels"],
            "normal_class": meta.get("normal_label"),
            "multilabel": bool(meta.get("multilabel", False)),
            "feature_spec": meta["feature_spec"],
            "metrics": meta.get("metrics", {}),
        }

    async def _read_upload(self, request: Request) -> bytes | JSONResponse:
        """The clip's bytes (multipart field ``file`` or the raw body), or an error."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return error_response(400, "invalid Content-Length header")
            if int(declared) > self.max_bytes:
                return error_response(413, self._too_large(int(declared)))
        body = bytearray()
        async for part in request.stream():  # chunked uploads have no Content-Length
            body += part
            if len(body) > self.max_bytes:
                return error_response(413, self._too_large(len(body)))
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            request._body = bytes(body)  # Starlette parses the form from the cached body
            try:
                form = await request.form()
            except Exception as err:
                return error_response(400, f"malformed multipart body: {err}")
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return error_response(400, "multipart upload without a file field named 'file'")
            data = await upload.read()
        else:
            data = bytes(body)
        if not data:
            return error_response(400, "empty upload: send a video file (field 'file' or body)")
        return data

    def _too_large(self, n: int) -> str:
        return f"upload of {n} bytes is over the limit of {self.max_bytes} bytes"

    @api.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses=_ERRORS,
        summary="Score one video clip",
        description="Send the clip as a multipart upload (field `file`) or as the raw body.",
    )
    async def score(self, request: Request) -> Any:
        t0 = time.perf_counter()
        data = await self._read_upload(request)
        if isinstance(data, JSONResponse):
            return data
        t1 = time.perf_counter()
        try:
            feats = await self.encoder.encode.remote(data)
            if "error" in feats:
                return error_response(feats["error"]["status"], feats["error"]["message"])
            pred = await self.classifier.predict.remote(feats)
        except Exception as err:  # a replica lost mid-request (node failure, OOM kill)
            logger.warning("scoring failed: %s: %s", type(err).__name__, err)
            return error_response(
                503, f"scoring is temporarily unavailable ({type(err).__name__}); retry shortly"
            )
        bounds = feats["bounds_s"]
        segments = [
            {
                "start_s": float(bounds[i]),
                "end_s": float(bounds[i + 1]),
                "anomaly_score": score,
                "top_class": top,
            }
            for i, (score, top) in enumerate(zip(pred["segment_scores"], pred["segment_top_class"]))
        ]
        enc = feats["timings_ms"]
        return {
            "label": pred["label"],
            "probabilities": pred["probabilities"],
            "segments": segments,
            "has_audio": feats["has_audio"],
            "duration_s": feats["duration_s"],
            "model": self._model_id(),
            "timings_ms": {
                "upload": 1e3 * (t1 - t0),
                "decode": enc["decode"],
                "encode": enc["encode"],
                "classify": pred["classify_ms"],
                "total": 1e3 * (time.perf_counter() - t0),
                "encoder_batch_size": enc["batch_size"],
            },
        }


# --------------------------------------------------------------------------- the application


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """The scoring application. ``args``: see :class:`AppArgs`."""
    a = AppArgs.from_dict(dict(args or {}))
    ref = resolve_model(a.model, a.tracking_uri, a.output_dir)
    chunk_segments = int(ref.meta.get("config", {}).get("features", {}).get("chunk_segments", 32))
    encoder = Encoder.options(
        ray_actor_options={"num_cpus": a.encoder_cpus, "num_gpus": a.encoder_gpus},
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
        chunk_segments=chunk_segments,
        threads=a.threads,
        max_batch_size=a.max_batch_size,
        batch_wait_timeout_s=a.batch_wait_timeout_s,
    )
    classifier = Classifier.options(ray_actor_options={"num_cpus": a.classifier_cpus}).bind(
        asdict(ref)
    )
    return Ingress.bind(encoder, classifier, asdict(ref), a.max_upload_mb)
