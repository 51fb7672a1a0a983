"""The HTTP API's shapes: the JSON answers (pydantic, for the OpenAPI schema), the error
body every status shares, the request body's OpenAPI description, and :class:`ModelRef`,
the model a service is pinned to."""

from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

__all__ = [
    "API_VERSION",
    "ERROR_RESPONSES",
    "ERROR_TYPES",
    "SCORE_BODY",
    "ErrorResponse",
    "Health",
    "ModelInfo",
    "ModelRef",
    "ScoreResponse",
    "error_response",
]

API_VERSION = "v1"


@dataclass
class ModelRef:
    """A model pinned for serving: where replicas load it from, and what it is."""

    load_from: str  # a concrete registry URI (models:/name/version) or an absolute folder
    name: str
    version: str
    uri: str  # what the operator asked for
    tracking_uri: str | None
    meta: dict[str, Any] = field(default_factory=dict)  # the artifact's model.json


ERROR_TYPES = {
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
                "type": ERROR_TYPES.get(status, "error"),
                "message": message,
            }
        },
        status_code=status,
    )


class Segment(BaseModel):
    start_s: float = Field(description="segment start, seconds from the clip's start")
    end_s: float = Field(description="segment end (exclusive), seconds")
    anomaly_score: float = Field(
        description=(
            "1 - p(normal) for this segment (a multi-label model: its largest non-normal "
            "class probability)"
        ),
        ge=0,
        le=1,
    )
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
        json_schema_extra={"enum": sorted({*ERROR_TYPES.values(), "error"})},
    )
    message: str = Field(description="what went wrong, in one line for people")


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_RESPONSES = {
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
SCORE_BODY = {
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
