"""The model-side deployments: the Encoder (decode an upload on the model's segment grid,
Wav2Vec2 + MobileViT) and the Classifier (fusion + MTCN through the shared Predictor), and
the server's temporary upload files that the Ingress shares.

Both batch their requests (``@serve.batch``); their resources, batch sizes and autoscaling
are set by :func:`serve.app.build_app` from :class:`serve.app.AppArgs`.
"""

import asyncio
import contextlib
import ctypes
import gc
import os
import tempfile
import time
from typing import Any

import numpy as np
from ray import serve

from serve.limits import ClipLimits

__all__ = ["UPLOAD_PREFIX", "Classifier", "Encoder", "MediaError", "TempFiles", "public_reason"]

UPLOAD_PREFIX = "avarnet-upload-"  # temporary files in the system's temporary directory


class MediaError(Exception):
    """An upload the encoder cannot use; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def public_reason(reason: str, path: str) -> str:
    """A decoder's message without the server's temporary file name."""
    return reason.replace(f": '{path}'", "").replace(path, "<upload>")


def _release_memory() -> None:
    """Hand freed heap back to the system after a large clip (glibc keeps it otherwise:
    a replica's memory would stay at its peak)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class TempFiles:
    """The upload files one replica has open, removed when a request ends and, for any
    still open (requests cut short by a shutdown), when the replica shuts down."""

    def __init__(self, directory: str = "") -> None:
        self.paths: set[str] = set()
        self.directory = directory or None  # None: the system's temporary directory
        if self.directory:
            os.makedirs(self.directory, exist_ok=True)

    def new(self) -> str:
        fd, path = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=self.directory)
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


@serve.deployment(name="Encoder")  # resources, batches and autoscaling: build_app
class Encoder:
    """Decode an uploaded clip on the model's segment grid and encode it (Wav2Vec2 +
    MobileViT): short clips several per batch, long ones alone (``encode_long``).

    A clip is decoded and encoded chunk by chunk (the FeatureSpec's ``chunk_segments``), at
    most ``segment_budget`` segments of frames in memory at a time, whatever its length."""

    def __init__(
        self,
        spec: dict[str, Any],
        *,
        threads: int,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        limits: dict[str, Any],
        upload_dir: str = "",
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
        self.limits = ClipLimits(**limits)
        self.segment_budget = self.opts.chunk_segments * max_batch_size
        self.encode.set_max_batch_size(max_batch_size)
        self.encode.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.long_lane = asyncio.Semaphore(1)  # long clips: one at a time per replica
        self.files = TempFiles(upload_dir)

    def __del__(self) -> None:  # Serve calls it when the replica shuts down
        files = getattr(self, "files", None)
        if files is not None:
            files.remove_all()

    # The decorator's sizes are placeholders: __init__ sets them from AppArgs.
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
                raise MediaError(415, public_reason(err.reason, path)) from None
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
                raise MediaError(
                    422, f"undecodable video: {public_reason(err.reason, path)}"
                ) from None
        finally:
            self.files.remove(path)

    def _encode_batch(self, payloads: list[bytes]) -> list[dict[str, Any]]:
        """Decode and encode several clips, their chunks encoded together up to
        ``segment_budget`` segments at a time; one answer (or ``{"error": ...}``) per clip."""
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
        ms = {"decode": 1e3 * (total - encode_s), "encode": 1e3 * encode_s, "batch_size": n}
        out = [_clip_answer(feats[i], chunks[i], errors[i], ms) for i in range(n)]
        if sum(len(c) for c in chunks) > 1:  # more than one chunk's frames were held
            _release_memory()
        return out


def _clip_answer(
    parts: list[tuple[np.ndarray, np.ndarray]],
    chunks: list[tuple[np.ndarray, bool, str, float]],
    error: MediaError | None,
    timings_ms: dict[str, float],
) -> dict[str, Any]:
    """One clip's features joined across its chunks (``parts``: per chunk ``(audio,
    visual)``; ``chunks``: per chunk ``(bounds_s, has_audio, decoder, duration_s)``)."""
    if error is not None:
        return {"error": {"status": error.status, "message": error.message}}
    return {
        "audio": np.concatenate([a for a, _ in parts]),
        "visual": np.concatenate([v for _, v in parts]),
        "has_audio": bool(chunks[0][1]),
        "bounds_s": np.concatenate([chunks[0][0]] + [c[0][1:] for c in chunks[1:]]),
        "duration_s": float(chunks[0][3]),
        "decoder": "pyav" if any(c[2] == "pyav" for c in chunks) else "decord",
        "timings_ms": timings_ms,
    }


@serve.deployment(name="Classifier")  # resources and autoscaling: build_app
class Classifier:
    """The fusion + MTCN model, through the same Predictor as batch inference."""

    def __init__(self, ref: dict[str, Any], *, max_batch_size: int):
        from glue.tracking import load_predictor

        self.predictor = load_predictor(ref["load_from"], ref["tracking_uri"], ".")
        self.predict.set_max_batch_size(max_batch_size)

    # The decorator's size is a placeholder: __init__ sets it.
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
