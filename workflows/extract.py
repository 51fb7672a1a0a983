"""Distributed feature extraction with Ray Data: manifest rows -> Parquet feature table.

::

    manifest rows ─► decode (CPU tasks, decord) ─► encoders (actor pool, GPU when asked)
                  ─► driver assembles clips from chunks ─► part-*.parquet + errors.parquet

Long clips are decoded and encoded the FeatureSpec's ``chunk_segments`` segments at a
time, so no stage ever holds a whole long clip's frames. The driver joins a clip's chunk
features (small: T x D) and writes parts atomically every ``flush_clips`` clips, so an
interrupted run keeps what it finished and a re-run skips it. A clip that fails (decode or encode) goes to
``errors.parquet`` and the job goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avarnet.config import Config
from avarnet.data.decode import DecodeError, DecodeOptions, iter_chunks
from avarnet.data.manifest import segment_ground_truth
from avarnet.features import table as ft
from avarnet.features.spec import FeatureSpec, FeatureSpecMismatch

__all__ = ["ExtractSummary", "run_extract", "spec_from_config"]


def spec_from_config(cfg: Config) -> FeatureSpec:
    """The FeatureSpec of ``cfg.features``: the preset, with the fields the config sets."""
    from avarnet.features.backbones import build_feature_spec

    f = cfg.features
    overrides = {
        k: v
        for k, v in {
            "audio_backbone": f.audio_backbone,
            "visual_backbone": f.visual_backbone,
            "visual_weights": f.visual_weights,
            "segment_seconds": f.segment_seconds,
            "segment_frames": f.segment_frames,
            "frames_per_segment": f.frames_per_segment,
            "visual_stages": f.visual_stages,
            "chunk_segments": f.chunk_segments,
            "precision": f.precision,
        }.items()
        if v is not None
    }
    return build_feature_spec(f.preset, **overrides)


def extract_with_config(
    cfg: Config,
    rows: list[dict],
    out_dir: str | os.PathLike,
    *,
    progress: bool,
    logger: Any,
    spec: FeatureSpec | None = None,
    retry_failed: bool = False,
) -> ExtractSummary:
    """:func:`run_extract` with the spec (``spec_from_config`` unless given) and the
    parallelism of ``cfg.features`` (the CLI and the pipeline both extract through here)."""
    f = cfg.features
    return run_extract(
        rows,
        out_dir,
        spec or spec_from_config(cfg),
        workers=f.workers,
        gpus_per_worker=f.gpus_per_worker,
        decode_cpus=f.decode_cpus,
        decode_workers=f.decode_workers,
        encoder_cpus=f.encoder_cpus,
        clips_per_task=f.clips_per_task,
        threads_per_worker=f.threads_per_worker,
        batch_size=f.batch_size,
        decode_labels=f.decode_labels,
        encoder_labels=f.encoder_labels,
        fit_resources=f.fit_resources,
        progress=progress,
        logger=logger,
        retry_failed=retry_failed,
    )


@dataclass
class ExtractSummary:
    out_dir: str
    clips_total: int
    clips_ok: int  # written by this run
    clips_skipped: int  # already in the table before this run
    clips_failed: int
    clip_seconds: float  # seconds of video extracted by this run
    wall_seconds: float
    errors: list[dict] = field(default_factory=list)
    startup_seconds: float = 0.0  # until the first clip was done (actor start-up included)
    clips_failed_before: int = 0  # of clips_failed: failed in an earlier run, file unchanged

    @property
    def clip_seconds_per_s(self) -> float:
        return self.clip_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "clips_total": self.clips_total,
            "clips_ok": self.clips_ok,
            "clips_skipped": self.clips_skipped,
            "clips_failed": self.clips_failed,
            "clips_failed_before": self.clips_failed_before,
            "clip_seconds": round(self.clip_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "clip_seconds_per_s": round(self.clip_seconds_per_s, 3),
            "startup_seconds": round(self.startup_seconds, 3),
        }


def _error_row(row: dict, stage: str, message: str, opts: DecodeOptions) -> dict:
    k, s = opts.frames_per_segment, opts.image_size
    return {
        "video_id": row["video_id"],
        "path": row["path"],
        "chunk_index": 0,
        "n_chunks": 1,
        "segment_start": 0,
        "n_segments_total": 0,
        "duration_s": 0.0,
        "fps": 0.0,
        "has_audio": False,
        "decoder": "",
        "bounds_s": np.zeros(1, np.float64),
        "frames": np.zeros((0, k, s, s, 3), np.uint8),
        "audio": np.zeros(0, np.float32),
        "stage": stage,
        "error": message,
    }


def decode_row(row: dict, *, opts: DecodeOptions) -> Iterator[dict]:
    """One manifest row -> its decoded chunks, then possibly one error row. Runs in Ray
    tasks. A generator: Ray Data cuts its output into blocks as it goes, so a long clip is
    never held whole in memory (one chunk: the spec's ``chunk_segments`` segments of frames)."""
    try:
        for c in iter_chunks(row["path"], opts):
            yield {
                "video_id": row["video_id"],
                "path": row["path"],
                "chunk_index": c.chunk_index,
                "n_chunks": c.n_chunks,
                "segment_start": c.segment_start,
                "n_segments_total": c.n_segments_total,
                "duration_s": c.info.duration_s,
                "fps": c.info.fps,
                "has_audio": c.has_audio,
                "decoder": c.decoder,
                "bounds_s": c.bounds_s,
                "frames": c.frames,
                "audio": c.audio,
                "stage": "",
                "error": "",
            }
    except DecodeError as err:
        yield _error_row(row, "decode", str(err), opts)
    except Exception as err:  # an unexpected decoder failure must not fail the job
        yield _error_row(row, "decode", f"{row['path']}: {type(err).__name__}: {err}", opts)


class ChunkEncoder:
    """Ray Data actor: builds the backbones once, encodes batches of decoded chunks."""

    def __init__(self, spec_json: str, device: str | None = None, threads: int | None = None):
        import torch

        from avarnet.features.backbones import build_encoders

        if threads == 0:  # every core of the node (CPU-only: decode tasks share them)
            threads = os.cpu_count() or 1
        if threads:
            torch.set_num_threads(threads)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.spec = FeatureSpec.from_json(spec_json)
        self.encoders = build_encoders(self.spec, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from avarnet.data.decode import ClipChunk

        n = len(batch["video_id"])
        audio_feats: list[np.ndarray] = [np.zeros((0, self.spec.audio_dim), np.float32)] * n
        visual_feats: list[np.ndarray] = [np.zeros((0, self.spec.visual_dim), np.float32)] * n
        errors = [str(e) for e in batch["error"]]
        stages = [str(s) for s in batch["stage"]]
        good = [i for i in range(n) if not errors[i]]
        if good:
            chunks = [
                ClipChunk(
                    info=None,  # the encoders need only the arrays below
                    chunk_index=int(batch["chunk_index"][i]),
                    n_chunks=int(batch["n_chunks"][i]),
                    segment_start=int(batch["segment_start"][i]),
                    n_segments_total=int(batch["n_segments_total"][i]),
                    bounds_s=np.asarray(batch["bounds_s"][i], np.float64),
                    frames=np.asarray(batch["frames"][i]),
                    audio=np.asarray(batch["audio"][i], np.float32),
                    has_audio=bool(batch["has_audio"][i]),
                )
                for i in good
            ]
            try:
                results = self.encoders.encode_chunks(chunks)
                for i, (a, v) in zip(good, results):
                    audio_feats[i], visual_feats[i] = a, v
            except Exception:
                # Find the culprit(s): encode one by one so one bad chunk fails alone.
                for i, chunk in zip(good, chunks):
                    try:
                        ((a, v),) = self.encoders.encode_chunks([chunk])
                        audio_feats[i], visual_feats[i] = a, v
                    except Exception as err:
                        errors[i] = f"{batch['path'][i]}: {type(err).__name__}: {err}"
                        stages[i] = "encode"
        return {
            "video_id": batch["video_id"],
            "path": batch["path"],
            "chunk_index": batch["chunk_index"],
            "n_chunks": batch["n_chunks"],
            "duration_s": batch["duration_s"],
            "fps": batch["fps"],
            "has_audio": batch["has_audio"],
            "decoder": batch["decoder"],
            "bounds_s": batch["bounds_s"],
            "audio_feat": _ragged(audio_feats),
            "visual_feat": _ragged(visual_feats),
            "stage": np.asarray(stages, dtype=object),
            "error": np.asarray(errors, dtype=object),
        }


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


class _PartWriter:
    """Buffers finished clip rows and writes them as part files, ``flush`` at a time."""

    def __init__(self, out_dir: Path, spec: FeatureSpec, flush: int):
        self.out_dir, self.spec, self.flush_every = out_dir, spec, flush
        self.ready: list[dict] = []

    def add(self, row: dict) -> None:
        self.ready.append(row)
        if len(self.ready) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self.ready:
            ft.write_part(self.ready, self.out_dir, self.spec)
            self.ready = []


class Assembler:
    """Joins the chunk features of each clip, in whatever order they arrive, into one clip
    row (the manifest row + ``audio``, ``visual``, ``bounds_s``, ``has_audio``, ``decoder``,
    ``duration_s``, ``segment_gt``) and hands it to ``on_clip``; failed clips go to
    ``errors``."""

    def __init__(self, rows_by_id: dict[str, dict], spec: FeatureSpec, on_clip):
        self.rows_by_id = rows_by_id
        self.spec = spec
        self.on_clip = on_clip
        self.pending: dict[str, dict[int, dict]] = {}
        self.errors: list[dict] = []
        self.failed: set[str] = set()
        # Clips handed on already: a chunk that arrives again (its task re-ran after a
        # lost node or actor) must not write its clip twice.
        self.done: set[str] = set()
        self.ok = 0
        self.clip_seconds = 0.0

    def add(self, item: dict) -> bool:
        """Add one chunk result; True when a clip finished (ok or failed)."""
        vid = str(item["video_id"])
        if vid in self.failed or vid in self.done:
            return False
        if item["error"]:
            self.failed.add(vid)
            self.pending.pop(vid, None)
            self.errors.append(
                {
                    "video_id": vid,
                    "path": item["path"],
                    "stage": item["stage"],
                    "message": item["error"],
                    "fingerprint": ft.file_fingerprint(item["path"]),
                }
            )
            return True
        parts = self.pending.setdefault(vid, {})
        parts[int(item["chunk_index"])] = item
        if len(parts) < int(item["n_chunks"]):
            return False
        del self.pending[vid]
        self.done.add(vid)
        ordered = [parts[i] for i in range(len(parts))]
        row = dict(self.rows_by_id[vid])
        audio = np.concatenate([np.asarray(p["audio_feat"], np.float32) for p in ordered])
        visual = np.concatenate([np.asarray(p["visual_feat"], np.float32) for p in ordered])
        opts = self.spec.decode_options()
        bounds = [np.asarray(p["bounds_s"], np.float64) for p in ordered]
        row.update(
            audio=audio,
            visual=visual,
            bounds_s=np.concatenate([bounds[0]] + [b[1:] for b in bounds[1:]]),
            has_audio=bool(item["has_audio"]),
            # PyAV when it took over part of the clip from decord (see avarnet.data.decode)
            decoder="pyav" if any(p["decoder"] == "pyav" for p in ordered) else "decord",
            duration_s=float(item["duration_s"]),
            fps=float(item["fps"]),
            segment_gt=_segment_gt(row, len(visual), float(item["fps"]), opts),
        )
        self.ok += 1
        self.clip_seconds += row["duration_s"]
        self.on_clip(row)
        return True


def _segment_gt(row: dict, n_segments: int, fps: float, opts: DecodeOptions) -> np.ndarray:
    """Per-segment anomaly ground truth from the manifest's frame intervals."""
    intervals = row.get("gt_intervals") or []
    if not intervals:
        return np.zeros(n_segments, np.int8)
    if opts.segment_frames is not None:
        frame_bounds = np.arange(n_segments + 1) * opts.segment_frames
    else:
        # Frame intervals -> segments through the clip's mean frame rate.
        frame_bounds = np.round(np.arange(n_segments + 1) * opts.segment_seconds * fps).astype(int)
    return np.asarray(segment_ground_truth(intervals, frame_bounds), np.int8)


@dataclass
class ExtractPlan:
    """What a run has to do: ``todo`` rows; ``done`` clips already in the table;
    ``failed_before``: error rows of clips that failed earlier and did not change since."""

    todo: list[dict]
    done: int
    failed_before: list[dict]


def plan_extract(
    rows: list[dict], out_dir: str | os.PathLike, spec: FeatureSpec, *, retry_failed: bool = False
) -> ExtractPlan:
    """Work out what is left to extract, without Ray (a run with nothing to do starts no
    actors). Raises FeatureSpecMismatch when ``out_dir`` holds another spec's features."""
    out = Path(out_dir)
    _check_out_dir(out, spec)
    return split_todo(rows, ft.done_video_ids(out), out, retry_failed=retry_failed)


def split_todo(
    rows: list[dict], done: set[str], out_dir: Path, *, retry_failed: bool = False
) -> ExtractPlan:
    """``rows`` less the ``done`` ids and the clips in ``out_dir``'s error table whose file
    has not changed since it failed (unless ``retry_failed``): extraction's and batch
    scoring's plan."""
    before = {} if retry_failed else {e["video_id"]: e for e in ft.read_errors(out_dir)}
    todo, failed = [], []
    for r in rows:
        if r["video_id"] in done:
            continue
        e = before.get(r["video_id"])
        unchanged = e is not None and e["path"] == r["path"]
        if unchanged and e["fingerprint"] == ft.file_fingerprint(r["path"]):
            failed.append(e)
            continue
        todo.append(r)
    return ExtractPlan(todo, len(rows) - len(todo) - len(failed), failed)


def _check_out_dir(out_dir: Path, spec: FeatureSpec) -> None:
    """Refuse to mix features of different specs."""
    if (out_dir / ft.SPEC_FILE).exists() or ft.part_files(out_dir):
        existing = ft.read_spec(out_dir)
        try:
            existing.check_compatible(spec)
        except FeatureSpecMismatch as err:
            raise FeatureSpecMismatch(
                err.differences,
                f"{out_dir} holds features of another FeatureSpec (use another --out or delete "
                "it); specs differ",
            ) from None


def encoded_chunks(
    rows: list[dict],
    spec: FeatureSpec,
    *,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    decode_cpus: float = 1.0,
    decode_workers: int | None = None,
    encoder_cpus: float = 1.0,
    clips_per_task: int = 1,
    batch_size: int = 4,
    threads_per_worker: int | None = None,
    decode_labels: dict[str, str] | None = None,
    encoder_labels: dict[str, str] | None = None,
    fit_resources: bool = True,
):
    """The Ray Data pipeline shared by extraction and batch scoring: manifest rows ->
    decode tasks (CPUs; chunk by chunk, bounded memory) -> encoder actors (GPUs when
    given) -> one row per chunk with its features, or an error row. Lazy: nothing runs
    until it is iterated (:class:`Assembler` joins a clip's chunks).

    ``decode_labels`` / ``encoder_labels``: Ray node labels the decode tasks / encoder
    actors need (``{"avarnet.io/pool": "gpu"}``); empty or None: any node.
    ``fit_resources``: refuse (ConfigError) an actor pool that would leave no room for a
    decode task on the cluster as it is (off on an autoscaling cluster)."""
    import ray

    from glue.runtime import pool_leaves_no_room, warn_if_unplaceable

    decode_needs = {"CPU": decode_cpus}
    encoder_needs = {"CPU": encoder_cpus, "GPU": gpus_per_worker}
    nodes = ray.nodes() if ray.is_initialized() else None  # read once for the three checks
    warn_if_unplaceable("decode tasks", decode_labels, decode_needs, nodes)
    warn_if_unplaceable("encoder actors", encoder_labels, encoder_needs, nodes)
    if fit_resources:
        why = pool_leaves_no_room(
            workers, encoder_labels, encoder_needs, decode_labels, decode_needs, nodes
        )
        if why:
            from avarnet.config import ConfigError

            raise ConfigError(
                f"features.workers={workers} encoder actors would leave no CPU for decoding "
                f"({why.replace('the tasks', 'decode tasks')}), and extraction would wait "
                "forever: lower features.workers or features.encoder_cpus / decode_cpus, "
                "or add nodes (on an autoscaling cluster: features.fit_resources=false)"
            )
    opts = spec.decode_options()  # chunked as the spec says (the audio context)
    items = [{"video_id": r["video_id"], "path": r["path"]} for r in rows]
    ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // clips_per_task))
    ds = ds.flat_map(
        decode_row,
        fn_kwargs={"opts": opts},
        num_cpus=decode_cpus,
        concurrency=decode_workers,
        label_selector=dict(decode_labels) if decode_labels else None,
    )
    return ds.map_batches(
        ChunkEncoder,
        fn_constructor_kwargs={"spec_json": spec.to_json(), "threads": threads_per_worker},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus_per_worker,
        num_cpus=encoder_cpus,
        label_selector=dict(encoder_labels) if encoder_labels else None,
    )


def run_extract(
    rows: list[dict],
    out_dir: str | os.PathLike,
    spec: FeatureSpec,
    *,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    decode_cpus: float = 1.0,
    decode_workers: int | None = None,
    encoder_cpus: float = 1.0,
    clips_per_task: int = 1,
    batch_size: int = 4,
    flush_clips: int = 64,
    threads_per_worker: int | None = None,
    decode_labels: dict[str, str] | None = None,
    encoder_labels: dict[str, str] | None = None,
    fit_resources: bool = True,
    progress: bool = True,
    logger: Any = None,
    retry_failed: bool = False,
) -> ExtractSummary:
    """Extract features of ``rows`` (manifest rows) into the table at ``out_dir``.

    Clips already in the table are skipped; so are clips that failed in an earlier run
    and whose file has not changed since (kept in the error table), unless
    ``retry_failed``.

    Ray must be initialised by the caller (``ray.init`` or a job's cluster). ``logger`` is an
    optional :class:`glue.tracking.RunLogger` that receives params, metrics, artifacts.
    """
    from glue import console

    t0 = time.perf_counter()
    out = Path(out_dir).resolve()
    plan = plan_extract(rows, out, spec, retry_failed=retry_failed)
    out.mkdir(parents=True, exist_ok=True)
    ft.save_spec(spec, out)
    if logger is not None:
        logger.log_params({"feature_spec": spec.to_dict(), "workers": workers, "clips": len(rows)})
    writer = _PartWriter(out, spec, flush_clips)
    asm = Assembler({r["video_id"]: r for r in plan.todo}, spec, writer.add)
    startup_s = 0.0
    if plan.todo:
        ds = encoded_chunks(
            plan.todo,
            spec,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            decode_cpus=decode_cpus,
            decode_workers=decode_workers,
            encoder_cpus=encoder_cpus,
            clips_per_task=clips_per_task,
            batch_size=batch_size,
            threads_per_worker=threads_per_worker,
            decode_labels=decode_labels,
            encoder_labels=encoder_labels,
            fit_resources=fit_resources,
        )
        bar = console.progress_bar(len(plan.todo), "extract", "clip", disable=not progress)
        try:
            startup_s = drain(ds, asm, bar, t0)
        finally:
            writer.flush()  # keep what finished, even when interrupted
            bar.close()
    return _extract_summary(rows, out, plan, asm, t0, startup_s, logger)


def drain(
    ds, asm: Assembler, bar, t0: float, postfix: Callable[[float], str] | None = None
) -> float:
    """Feed the chunk rows of ``ds`` to ``asm``, a step of ``bar`` per finished clip (and
    ``postfix(seconds since t0)`` beside it). Returns the seconds from ``t0`` to the first
    finished clip (0 when none finished)."""
    startup_s = 0.0
    for item in ds.iter_rows():
        if asm.add(item):
            bar.update(1)
            startup_s = startup_s or time.perf_counter() - t0
            if postfix is not None:
                bar.set_postfix_str(postfix(time.perf_counter() - t0))
    return startup_s


def log_summary(logger: Any, summary: ExtractSummary) -> None:
    """Log the summary's numbers to ``logger`` (a :class:`glue.tracking.RunLogger`) as metrics."""
    logger.log_metrics({k: v for k, v in summary.to_dict().items() if isinstance(v, (int, float))})


def _extract_summary(
    rows: list[dict],
    out: Path,
    plan: ExtractPlan,
    asm: Assembler,
    t0: float,
    startup_s: float,
    logger: Any,
) -> ExtractSummary:
    """Write the error table and return (and log) the summary of the run."""
    errors = plan.failed_before + asm.errors
    ft.write_errors(errors, out)
    summary = ExtractSummary(
        out_dir=str(out),
        clips_total=len(rows),
        clips_ok=asm.ok,
        clips_skipped=plan.done,
        clips_failed=len(errors),
        clip_seconds=asm.clip_seconds,
        wall_seconds=time.perf_counter() - t0,
        errors=errors,
        startup_seconds=startup_s,
        clips_failed_before=len(plan.failed_before),
    )
    if logger is not None:
        log_summary(logger, summary)
        logger.log_artifact(out / ft.SPEC_FILE)
        logger.log_artifact(out / ft.ERRORS_FILE)
    return summary
