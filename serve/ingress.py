"""The HTTP edge: FastAPI routes (``/``, ``/v1/score``, ``/v1/health``, ``/v1/model``,
``/docs``) on the Ingress deployment, which streams an upload to a temporary file, checks
it against the limits, and sends it to the Encoder and the Classifier.

An upload is never held whole in memory while it arrives, is cut when it stalls for
``upload_idle_timeout_s``, and is removed on every path; the server never opens a path
that a client sends. Every error is ``{"error": {"status", "type", "message"}}``.
"""

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from serve.deployments import TempFiles, public_reason
from serve.limits import ClipLimits
from serve.schemas import (
    API_VERSION,
    ERROR_RESPONSES,
    SCORE_BODY,
    Health,
    ModelInfo,
    ModelRef,
    ScoreResponse,
    error_response,
)

__all__ = ["Ingress", "UploadRefused", "api"]

logger = logging.getLogger("ray.serve")
STATIC = Path(__file__).resolve().parent / "static"

api = FastAPI(
    title="avarnet",
    version=API_VERSION,
    description="Audio-visual anomaly recognition (AVAR-Net): upload a video clip, get its "
    "class, class probabilities and a per-segment anomaly timeline.",
)


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


@serve.deployment(name="Ingress")  # resources and autoscaling: build_app
@serve.ingress(api)
class Ingress:
    """The HTTP API. ``ref``: the pinned :class:`~serve.schemas.ModelRef` as a dict;
    ``limits``: :class:`~serve.limits.ClipLimits` as a dict."""

    def __init__(
        self,
        encoder: DeploymentHandle,
        classifier: DeploymentHandle,
        ref: dict[str, Any],
        *,
        max_upload_mb: float,
        limits: dict[str, Any],
        long_clip_seconds: float,
        idle_timeout_s: float,
        upload_dir: str = "",
    ):
        self.encoder = encoder
        self.classifier = classifier
        self.ref = ModelRef(**ref)
        self.max_bytes = int(max_upload_mb * 1024 * 1024)
        self.limits = ClipLimits(**limits)
        self.long_clip_seconds = long_clip_seconds
        self.idle_timeout_s = idle_timeout_s
        self.files = TempFiles(upload_dir)
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
            raise UploadRefused(415, public_reason(err.reason, path)) from None
        problem = self.limits.problem(
            duration_s=header.duration_s, width=header.width, height=header.height
        )
        if problem:
            raise UploadRefused(413, problem)
        return header.duration_s

    @api.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses=ERROR_RESPONSES,
        summary="Score one video clip",
        description="Send the clip as a multipart upload (field `file`) or as the raw body. "
        "Clips over the service's limits (length, frame size, segments: see /v1/model) are "
        "refused with 413 before they are decoded.",
        openapi_extra=SCORE_BODY,
    )
    async def score(self, request: Request) -> Any:
        t0 = time.perf_counter()
        try:
            data, duration_s = await self._upload(request)
        except UploadRefused as err:
            return error_response(err.status, err.message)
        except ClientDisconnect:
            logger.warning("client went away during its upload; nothing scored")
            return error_response(400, "client disconnected")
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
        upload_ms = 1e3 * (t1 - t0)
        return self._answer(feats, pred, upload_ms, total_ms=1e3 * (time.perf_counter() - t0))

    async def _upload(self, request: Request) -> tuple[bytes, float | None]:
        """The clip's bytes and its length from the container header (``None``: not
        recorded), read through a temporary file that is removed on every path."""
        path = self.files.new()
        try:
            size = await self._receive(request, path)
            if size == 0:
                raise UploadRefused(400, "empty upload: send a video file (field 'file' or body)")
            duration_s = await asyncio.to_thread(self._check_header, path)
            return await asyncio.to_thread(Path(path).read_bytes), duration_s
        finally:
            self.files.remove(path)

    def _answer(
        self, feats: dict[str, Any], pred: dict[str, Any], upload_ms: float, total_ms: float
    ) -> dict[str, Any]:
        """The :class:`~serve.schemas.ScoreResponse` of the Encoder's and the Classifier's
        answers."""
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
                "upload": upload_ms,
                "decode": enc["decode"],
                "encode": enc["encode"],
                "classify": pred["classify_ms"],
                "total": total_ms,
                "encoder_batch_size": enc["batch_size"],
            },
        }
