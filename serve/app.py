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

Every request's work is bounded. An upload is streamed to a temporary file that the server
names itself (never held whole in memory, cut when it stalls for ``upload_idle_timeout_s``,
removed on every path); its container header is checked against ``max_clip_seconds``,
``max_frame_pixels`` and ``max_segments`` before anything is decoded (413, with a pointer
to batch scoring). Clips longer than ``long_clip_seconds`` (or of unknown length) are
encoded outside the batches, one at a time per replica, so they never hold up the short
clips that share a batch. The server never opens a path that a client sends.
"""

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from avarnet.config import Config, ServeConfig

__all__ = ["AppArgs", "ClipLimits", "ScoreResponse", "build_app", "fit_resources", "resolve_model"]

logger = logging.getLogger("ray.serve")
STATIC = Path(__file__).resolve().parent / "static"
API_VERSION = "v1"
UPLOAD_PREFIX = "avarnet-upload-"  # temporary files in the system's temporary directory


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
        max_clip_seconds / max_frame_pixels / max_segments: longer clips, larger frames
            (width x height) and clips of more segments are refused with 413 before they
            are decoded; 0 turns a limit off.
        long_clip_seconds: clips longer than this (or of unknown length) are encoded
            outside the batches, one at a time per replica.
        upload_idle_timeout_s: an upload that sends nothing for this long is cut (408).
        encoder_cpus / encoder_gpus: per Encoder replica (GPUs: encoders run on CUDA);
            ``encoder_cpus`` 0: fit the cluster (1 on nodes of 4 CPUs or more, else 0.5).
        encoder_min_replicas / encoder_max_replicas: the Encoder's autoscaling range.
        classifier_cpus: per Classifier replica (0: 0.5, or 0.2 on nodes under 4 CPUs).
        fit_resources: cap the autoscaling ceilings to what the cluster's CPUs (and GPUs)
            can hold at deployment, so that Serve never asks for a replica that cannot be
            placed; turn off on a cluster that adds nodes on demand (Ray autoscaler).
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
    max_clip_seconds: float = _SERVE.max_clip_seconds
    max_frame_pixels: int = _SERVE.max_frame_pixels
    max_segments: int = _SERVE.max_segments
    long_clip_seconds: float = _SERVE.long_clip_seconds
    upload_idle_timeout_s: float = _SERVE.upload_idle_timeout_s
    encoder_cpus: float = _SERVE.encoder_cpus
    encoder_gpus: float = _SERVE.encoder_gpus
    encoder_min_replicas: int = 1
    encoder_max_replicas: int = _SERVE.encoder_max_replicas
    classifier_cpus: float = 0.0
    fit_resources: bool = True
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
            if isinstance(default, bool) and isinstance(value, str):
                setattr(out, key, value.strip().lower() in ("1", "true", "yes", "on"))
            elif isinstance(default, bool) or default is None:
                setattr(out, key, value)
            else:  # `serve run` passes every argument as a string
                setattr(out, key, type(default)(value))
        if out.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be > 0, got {out.max_upload_mb}")
        if not 1 <= out.encoder_min_replicas <= out.encoder_max_replicas:
            raise ValueError("need 1 <= encoder_min_replicas <= encoder_max_replicas")
        if out.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {out.max_batch_size}")
        for key in ("max_clip_seconds", "max_frame_pixels", "max_segments", "encoder_cpus"):
            if getattr(out, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0: no limit / fit), got {getattr(out, key)}")
        if out.upload_idle_timeout_s <= 0:
            raise ValueError(f"upload_idle_timeout_s must be > 0, got {out.upload_idle_timeout_s}")
        return out

    def limits(self) -> "ClipLimits":
        return ClipLimits(self.max_clip_seconds, self.max_frame_pixels, self.max_segments)


BATCH_SCORING_HINT = "split it, or score long footage offline in batch (README: Serving limits)"


@dataclass(frozen=True)
class ClipLimits:
    """What one request may cost, checked from the container before anything is decoded.
    0 turns a limit off."""

    max_seconds: float = 0.0
    max_pixels: int = 0
    max_segments: int = 0

    def problem(
        self, *, duration_s: float | None, width: int, height: int, n_segments: int | None = None
    ) -> str | None:
        """Why a clip is over a limit (one line for the client), or ``None``."""
        if self.max_pixels and width * height > self.max_pixels:
            return (
                f"frames of {width}x{height} pixels are over this service's limit of "
                f"{self.max_pixels} pixels per frame (serve.max_frame_pixels)"
            )
        if self.max_seconds and duration_s is not None and duration_s > self.max_seconds:
            return (
                f"the clip is {duration_s:.1f} s long; this service scores clips of up to "
                f"{self.max_seconds:g} s (serve.max_clip_seconds): {BATCH_SCORING_HINT}"
            )
        if self.max_segments and n_segments is not None and n_segments > self.max_segments:
            return (
                f"the clip has {n_segments} segments; this service scores clips of up to "
                f"{self.max_segments} segments (serve.max_segments): {BATCH_SCORING_HINT}"
            )
        return None


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
    from avarnet.predictor import read_meta
    from workflows import tracking

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
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "undecodable_media",
    500: "internal_error",
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


def _release_memory() -> None:
    """Hand freed heap back to the system after a large clip (glibc keeps it otherwise:
    a replica's memory would stay at its peak)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _TempFiles:
    """The upload files one replica has open, removed when a request ends and, for any
    still open (requests cut short by a shutdown), when the replica shuts down."""

    def __init__(self) -> None:
        self.paths: set[str] = set()

    def new(self) -> str:
        fd, path = tempfile.mkstemp(prefix=UPLOAD_PREFIX)
        os.close(fd)
        self.paths.add(path)
        return path

    def remove(self, path: str) -> None:
        self.paths.discard(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def remove_all(self) -> None:
        for path in list(self.paths):
            self.remove(path)


# --------------------------------------------------------------------------- deployments


@serve.deployment(name="Encoder")  # resources and autoscaling: build_app, from AppArgs
class Encoder:
    """Decode an uploaded clip on the model's segment grid and encode it (Wav2Vec2 +
    MobileViT): short clips several per batch, long ones alone (``encode_long``).

    A clip is decoded and encoded chunk by chunk, at most ``segment_budget`` segments of
    frames in memory at a time, whatever its length."""

    def __init__(
        self,
        spec: dict[str, Any],
        threads: int = 0,
        max_batch_size: int = 4,
        batch_wait_timeout_s: float = 0.0,
        limits: dict[str, Any] | None = None,
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
        self.opts = self.encoders.spec.decode_options()  # chunked as the model's features
        self.limits = ClipLimits(**(limits or {}))
        self.segment_budget = self.opts.chunk_segments * max_batch_size
        self.encode.set_max_batch_size(max_batch_size)
        self.encode.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.long_lane = asyncio.Semaphore(1)  # long clips: one at a time per replica
        self.files = _TempFiles()

    def __del__(self) -> None:  # Serve calls it when the replica shuts down
        files = getattr(self, "files", None)
        if files is not None:
            files.remove_all()

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.0)
    async def encode(self, payloads: list[bytes]) -> list[dict[str, Any]]:
        # Off the event loop, so that the next batch can queue while this one runs.
        return await asyncio.to_thread(self._encode_batch, payloads)

    async def encode_long(self, payload: bytes) -> dict[str, Any]:
        """One long clip, outside the batches: the short clips' batches run beside it."""
        async with self.long_lane:
            (out,) = await asyncio.to_thread(self._encode_batch, [payload])
        return out

    def _clip_chunks(self, data: bytes):
        """The clip's chunks, decoded one at a time; :class:`MediaError` for bad media."""
        from avarnet.data.decode import DecodeError, iter_chunks, probe

        path = self.files.new()
        try:
            with open(path, "wb") as f:
                f.write(data)
            del data
            try:
                info = probe(path)
            except DecodeError as err:
                raise MediaError(415, _public(err.reason, path)) from None
            problem = self.limits.problem(
                duration_s=info.duration_s,
                width=info.width,
                height=info.height,
                n_segments=info.n_segments(self.opts),
            )
            if problem:
                raise MediaError(413, problem)
            try:
                yield from iter_chunks(path, self.opts, info=info)
            except DecodeError as err:
                raise MediaError(422, f"undecodable video: {_public(err.reason, path)}") from None
        finally:
            self.files.remove(path)

    def _encode_batch(self, payloads: list[bytes]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        n = len(payloads)
        errors: list[MediaError | None] = [None] * n
        # per clip and chunk: (bounds_s, has_audio, decoder, duration_s); no frames kept
        chunks: list[list[tuple[np.ndarray, bool, str, float]]] = [[] for _ in range(n)]
        feats: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n)]
        pending: list[tuple[int, Any]] = []
        encode_s = 0.0

        def flush() -> None:
            nonlocal encode_s
            t = time.perf_counter()
            out = self.encoders.encode_chunks([c for _, c in pending])
            encode_s += time.perf_counter() - t
            for (i, _), pair in zip(pending, out):
                feats[i].append(pair)
            pending.clear()

        for i, data in enumerate(payloads):
            try:
                for chunk in self._clip_chunks(data):
                    pending.append((i, chunk))
                    meta = (chunk.bounds_s, chunk.has_audio, chunk.decoder, chunk.info.duration_s)
                    chunks[i].append(meta)
                    if sum(c.n_segments for _, c in pending) >= self.segment_budget:
                        flush()
            except MediaError as err:
                errors[i] = err
            except Exception as err:  # a decoder crash on hostile input is still bad media
                errors[i] = MediaError(422, f"undecodable video: {type(err).__name__}")
            if errors[i] is not None:
                pending[:] = [(j, c) for j, c in pending if j != i]
        if pending:
            flush()
        total = time.perf_counter() - t0
        ms = {
            "decode": 1e3 * (total - encode_s),
            "encode": 1e3 * encode_s,
            "batch_size": n,
        }
        out = []
        for i in range(n):
            err = errors[i]
            if err is not None:
                out.append({"error": {"status": err.status, "message": err.message}})
                continue
            parts, cs = feats[i], chunks[i]
            out.append(
                {
                    "audio": np.concatenate([a for a, _ in parts]),
                    "visual": np.concatenate([v for _, v in parts]),
                    "has_audio": bool(cs[0][1]),
                    "bounds_s": np.concatenate([cs[0][0]] + [c[0][1:] for c in cs[1:]]),
                    "duration_s": float(cs[0][3]),
                    "decoder": "pyav" if any(c[2] == "pyav" for c in cs) else "decord",
                    "timings_ms": ms,
                }
            )
        if sum(len(c) for c in chunks) > 1:  # more than one chunk's frames were held
            _release_memory()
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
    decoder: str = Field(description="the decoder that read the clip's frames: decord or pyav")
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
    random_backbones: bool = Field(
        description="true: Wav2Vec2 / MobileViT are randomly initialised (demo and tests); "
        "the scores then test the pipeline, they mean nothing"
    )
    limits: "Limits"


class Limits(BaseModel):
    max_upload_bytes: int
    max_clip_seconds: float = Field(description="0: no limit")
    max_frame_pixels: int = Field(description="width x height; 0: no limit")
    max_segments: int = Field(description="0: no limit")


class Health(BaseModel):
    status: str
    model: ModelId


class ErrorBody(BaseModel):
    status: int = Field(description="the HTTP status, as in the response's status line")
    type: str = Field(
        description="the status's name, for programs",
        json_schema_extra={"enum": sorted({*_ERROR_TYPES.values(), "error"})},
    )
    message: str = Field(description="what went wrong, in one line for people")


class ErrorResponse(BaseModel):
    error: ErrorBody


api = FastAPI(
    title="avarnet",
    version=API_VERSION,
    description="Audio-visual anomaly recognition (AVAR-Net): upload a video clip, get its "
    "class, class probabilities and a per-segment anomaly timeline.",
)
_ERRORS = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "Empty upload, malformed multipart body, or no multipart field `file`",
        408: "The upload stalled (nothing received for `upload_idle_timeout_s`)",
        413: "The upload is over `max_upload_bytes`, or the clip over a length, frame size "
        "or segment limit (see /v1/model)",
        415: "Not a video file",
        422: "A video container whose streams cannot be decoded",
        503: "Scoring is temporarily unavailable (a replica was lost); retry",
    }.items()
}
_BINARY = {"type": "string", "format": "binary"}
_SCORE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The video clip: a multipart upload with the file in field `file`, "
        "or the file's bytes as the body (any container FFmpeg reads: MP4, WebM, MKV, AVI, "
        "MOV, MPEG-PS/TS, ASF/WMV, Ogg).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {**_BINARY, "description": "the video file"}},
                }
            },
            "application/octet-stream": {"schema": _BINARY},
            "video/*": {"schema": _BINARY},
        },
    }
}


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown paths (404), wrong methods (405): the same ``{"error": ...}`` body."""
    response = error_response(exc.status_code, str(exc.detail))
    for key, value in (exc.headers or {}).items():  # 405's Allow header
        response.headers[key] = value
    return response


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(422, f"invalid request: {where}: {first.get('msg', 'invalid')}")


def _random_backbones(spec: dict[str, Any]) -> bool:
    """Whether either backbone of a FeatureSpec is randomly initialised."""
    names = (spec.get("audio_backbone") or "", spec.get("visual_weights") or "")
    return any(str(n).startswith("random:") for n in names)


class UploadRefused(Exception):
    """An upload cut short: ``status`` and one line for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


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
        limits: dict[str, Any] | None = None,
        long_clip_seconds: float = 30.0,
        idle_timeout_s: float = 30.0,
    ):
        self.encoder = encoder
        self.classifier = classifier
        self.ref = ModelRef(**ref)
        self.max_bytes = int(max_upload_mb * 1024 * 1024)
        self.limits = ClipLimits(**(limits or {}))
        self.long_clip_seconds = long_clip_seconds
        self.idle_timeout_s = idle_timeout_s
        self.files = _TempFiles()
        self.page = (STATIC / "index.html").read_text()

    def __del__(self) -> None:  # Serve calls it when the replica shuts down
        files = getattr(self, "files", None)
        if files is not None:
            files.remove_all()

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
            "random_backbones": _random_backbones(meta["feature_spec"]),
            "limits": {
                "max_upload_bytes": self.max_bytes,
                "max_clip_seconds": self.limits.max_seconds,
                "max_frame_pixels": self.limits.max_pixels,
                "max_segments": self.limits.max_segments,
            },
        }

    async def _body(self, request: Request):
        """The request body's chunks, counted against the limit; a stall of more than
        ``idle_timeout_s`` between two chunks ends the upload."""
        chunks = request.stream().__aiter__()
        received = 0
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), self.idle_timeout_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UploadRefused(
                    408,
                    f"upload stalled: nothing received for {self.idle_timeout_s:g} s "
                    f"after {received} bytes",
                ) from None
            received += len(chunk)
            if received > self.max_bytes:
                raise UploadRefused(413, self._too_large(received))
            yield chunk

    async def _receive(self, request: Request, path: str) -> int:
        """Stream the clip (multipart field ``file`` or the raw body) into ``path``, never
        holding more than one chunk of it in memory. Returns its size in bytes."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise UploadRefused(400, "invalid Content-Length header")
            if int(declared) > self.max_bytes:
                raise UploadRefused(413, self._too_large(int(declared)))
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            size = 0
            with open(path, "wb") as f:
                async for chunk in self._body(request):
                    f.write(chunk)
                    size += len(chunk)
            return size
        # Starlette's parser spools file parts to disk past 1 MB; other fields are small.
        parser = MultiPartParser(Headers(raw=request.scope["headers"]), self._body(request))
        try:
            form = await parser.parse()
        except MultiPartException as err:
            raise UploadRefused(400, f"malformed multipart body: {err.message}") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise UploadRefused(400, "multipart upload without a file field named 'file'")
            upload.file.seek(0)
            with open(path, "wb") as f:
                await asyncio.to_thread(shutil.copyfileobj, upload.file, f, 1 << 20)
                return f.tell()
        finally:
            await form.close()

    def _too_large(self, n: int) -> str:
        return f"upload of {n} bytes is over the limit of {self.max_bytes} bytes"

    def _check_header(self, path: str) -> float | None:
        """The clip's length from its container header (``None``: not recorded);
        :class:`UploadRefused` when it is no video or over a limit."""
        from avarnet.data.decode import DecodeError, read_header

        try:
            header = read_header(path)
        except DecodeError as err:
            raise UploadRefused(415, _public(err.reason, path)) from None
        problem = self.limits.problem(
            duration_s=header.duration_s, width=header.width, height=header.height
        )
        if problem:
            raise UploadRefused(413, problem)
        return header.duration_s

    @api.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses=_ERRORS,
        summary="Score one video clip",
        description="Send the clip as a multipart upload (field `file`) or as the raw body. "
        "Clips over the service's limits (length, frame size, segments: see /v1/model) are "
        "refused with 413 before they are decoded.",
        openapi_extra=_SCORE_BODY,
    )
    async def score(self, request: Request) -> Any:
        t0 = time.perf_counter()
        path = self.files.new()
        try:
            size = await self._receive(request, path)
            if size == 0:
                raise UploadRefused(400, "empty upload: send a video file (field 'file' or body)")
            duration_s = await asyncio.to_thread(self._check_header, path)
            data = await asyncio.to_thread(Path(path).read_bytes)
        except UploadRefused as err:
            return error_response(err.status, err.message)
        except ClientDisconnect:
            logger.warning("client went away during its upload; nothing scored")
            return error_response(400, "client disconnected")
        finally:
            self.files.remove(path)
        t1 = time.perf_counter()
        long = duration_s is None or duration_s > self.long_clip_seconds
        try:
            if long:
                feats = await self.encoder.encode_long.remote(data)
            else:
                feats = await self.encoder.encode.remote(data)
            del data
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
            "decoder": feats["decoder"],
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


def fit_resources(a: AppArgs, nodes: list[dict[str, Any]] | None = None) -> AppArgs:
    """``a`` with per-replica CPUs chosen (where 0) and the Encoder's autoscaling ceiling
    capped to what the cluster can hold, so that Serve never waits for a replica that
    cannot be placed (on a 2-CPU laptop: Encoders of 0.5 CPU, at most 2 of them).

    ``nodes``: ``ray.nodes()`` (default: the current cluster's, when Ray is initialised).
    Without them, or with ``fit_resources`` off, only the zeros are replaced (1 CPU per
    Encoder, 0.5 per Classifier) and the ceilings are left as asked.
    """
    if nodes is None and a.fit_resources:
        import ray

        nodes = ray.nodes() if ray.is_initialized() else None
    if not a.fit_resources:
        nodes = None
    alive = [n.get("Resources", {}) for n in (nodes or []) if n.get("Alive", True)]
    cpus = [float(r.get("CPU", 0.0)) for r in alive]
    small = bool(cpus) and max(cpus) < 4
    encoder_cpus = a.encoder_cpus or (0.5 if small else 1.0)
    classifier_cpus = a.classifier_cpus or (0.2 if small else 0.5)
    out = dataclasses.replace(a, encoder_cpus=encoder_cpus, classifier_cpus=classifier_cpus)
    if not cpus:
        return out
    # What the other deployments may take at their ceilings (INGRESS_/CLASSIFIER_MAX).
    room = sum(cpus) - INGRESS_MAX * INGRESS_CPUS - CLASSIFIER_MAX * classifier_cpus
    fit = int(room / encoder_cpus + 1e-9)
    if a.encoder_gpus > 0:
        gpus = sum(float(r.get("GPU", 0.0)) for r in alive)
        fit = min(fit, int(gpus / a.encoder_gpus + 1e-9))
    ceiling = max(a.encoder_min_replicas, min(a.encoder_max_replicas, fit))
    if ceiling < a.encoder_max_replicas:
        logger.info(
            "avarnet: Encoder replicas capped at %d (%.2g CPU each; the cluster has %.3g CPUs)",
            ceiling,
            encoder_cpus,
            sum(cpus),
        )
    return dataclasses.replace(out, encoder_max_replicas=ceiling)


INGRESS_CPUS, INGRESS_MAX, CLASSIFIER_MAX = 0.1, 2, 2


def check_encodable(ref: ModelRef) -> None:
    """Refuse a model whose FeatureSpec has no encoders here (features imported from
    external backbones, :mod:`avarnet.features.imported`): the service scores uploads."""
    from avarnet.config import ConfigError
    from avarnet.features.imported import encoder_problem

    problem = encoder_problem(ref.meta["feature_spec"])
    if problem:
        raise ConfigError(f"cannot serve {ref.uri}: {problem}")


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """The scoring application. ``args``: see :class:`AppArgs`."""
    a = fit_resources(AppArgs.from_dict(dict(args or {})))
    ref = resolve_model(a.model, a.tracking_uri, a.output_dir)
    check_encodable(ref)
    limits = asdict(a.limits())
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
        threads=a.threads,
        max_batch_size=a.max_batch_size,
        batch_wait_timeout_s=a.batch_wait_timeout_s,
        limits=limits,
    )
    classifier = Classifier.options(
        ray_actor_options={"num_cpus": a.classifier_cpus},
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": CLASSIFIER_MAX,
            "target_ongoing_requests": 4,
        },
    ).bind(asdict(ref))
    return Ingress.options(
        ray_actor_options={"num_cpus": INGRESS_CPUS},
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": INGRESS_MAX,
            "target_ongoing_requests": 16,
        },
    ).bind(
        encoder,
        classifier,
        asdict(ref),
        a.max_upload_mb,
        limits=limits,
        long_clip_seconds=a.long_clip_seconds,
        idle_timeout_s=a.upload_idle_timeout_s,
    )
