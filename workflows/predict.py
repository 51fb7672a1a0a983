"""Batch scoring: from footage to per-segment anomaly scores, as a Ray Data job.

::

    avarnet predict INPUTS... [--model models:/avarnet@champion] --out DIR
    ray job submit --working-dir . -- python -m workflows.predict INPUTS... --out /shared/DIR

``INPUTS``: video files, folders (walked recursively), manifest CSVs, or globs. Clips go
through the same pieces as extraction and the scoring service: decode tasks (CPUs, chunk
by chunk, so a 2-hour clip is never held whole) -> encoder actors built from the model's
FeatureSpec (GPUs when given) -> the model's :class:`~avarnet.predictor.Predictor`, in
batches. ``DIR`` gets:

- ``scores/part-*.parquet``: one row per clip and model version (``video_id``, ``path``,
  ``label``, ``probabilities``, ``segments``, ``has_audio``, ``duration_s``, ``decoder``,
  ``model_name``, ``model_version``, ``model_uri``, ``feature_spec_digest``);
- ``json/<model>-<version>/<video_id>.json``: each clip's answer, in the schema of the
  service's ``POST /v1/score``;
- ``events.csv``: runs of segments scored at least ``--threshold`` (merged across gaps under
  ``--min-gap-s``), what an analyst opens first; ``report.html``: a timeline per clip;
- ``frames/<model>-<version>/<video_id>.npy`` with ``--frame-scores``: one score per frame;
- ``errors.parquet``: the files that could not be read, with the reason.

A re-run skips clips this model version has scored (and failed files that have not
changed); another version's scores go to rows of their own. One file needs no cluster:
``avarnet predict clip.mp4`` scores it in the process, without starting Ray.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from avarnet.features import table as ft
from glue.errors import CliError
from glue.tracking import write_json
from workflows.extract import ExtractPlan, ExtractSummary, split_todo

__all__ = [
    "ModelId",
    "PredictSummary",
    "gather_inputs",
    "plan_predict",
    "run_predict",
    "score_one_file",
]

SCORES_DIR = "scores"
JSON_DIR = "json"
FRAMES_DIR = "frames"
EVENTS_FILE = "events.csv"
REPORT_FILE = "report.html"

SEGMENT = pa.struct(
    [
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("anomaly_score", pa.float64()),
        ("top_class", pa.string()),
    ]
)
SCORES_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("path", pa.string()),
        ("label", pa.string()),
        ("probabilities", pa.map_(pa.string(), pa.float64())),
        ("segments", pa.list_(SEGMENT)),
        ("has_audio", pa.bool_()),
        ("duration_s", pa.float64()),
        ("decoder", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("model_uri", pa.string()),
        ("feature_spec_digest", pa.string()),
    ]
)


# --------------------------------------------------------------------------- inputs


def gather_inputs(inputs: list[str]) -> list[dict]:
    """Manifest rows (``video_id``, ``path``, ``label``) for files, folders (recursively),
    manifest CSVs and globs. ``video_id`` is the path relative to the folder given (a
    file's own name without extension for files given one by one); the same file named
    twice is scored once.

    Raises:
        CliError: an input that does not exist, or no clip at all.
    """
    from avarnet.data.manifest import VIDEO_EXTENSIONS, ManifestError, read_manifest

    rows: list[dict] = []
    seen: set[str] = set()

    def add(path: str, video_id: str, label: str = "") -> None:
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        rows.append({"video_id": video_id, "path": os.path.abspath(path), "label": label})

    for item in inputs:
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        if not matches:
            raise CliError(f"{item}: no file matches")
        for path in matches:
            if os.path.isdir(path):
                for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    for name in sorted(filenames):
                        if name.startswith(".") or not name.lower().endswith(VIDEO_EXTENSIONS):
                            continue
                        full = os.path.join(dirpath, name)
                        rel = os.path.relpath(full, path).replace(os.sep, "/")
                        add(full, os.path.splitext(rel)[0])
            elif path.lower().endswith(".csv"):
                try:
                    manifest = read_manifest(path, format="csv")
                except ManifestError as err:
                    raise CliError(str(err)) from None
                for r in manifest.rows:
                    add(r["path"], r["video_id"], r.get("label") or "")
            elif os.path.exists(path):
                add(path, os.path.splitext(os.path.basename(path))[0])
            else:
                raise CliError(f"{path}: no such file or directory")
    if not rows:
        raise CliError(f"no video files in {' '.join(inputs)} (extensions: {VIDEO_EXTENSIONS})")
    ids = [r["video_id"] for r in rows]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:  # two files given one by one with the same name in different folders
        for r in rows:
            if r["video_id"] in dupes:
                r["video_id"] = r["path"].lstrip("/").rsplit(".", 1)[0]
    return rows


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelId:
    """What scored a clip: a registry version, a run's model, or an artifact folder (its
    version is then a digest of its files, so a changed folder scores anew)."""

    name: str
    version: str
    uri: str
    spec_digest: str

    @property
    def key(self) -> str:
        """A folder name for this model's outputs."""
        return f"{self.name}-{self.version}".replace("/", "_")

    def answer(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "uri": self.uri}


def _digest_folder(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def load_model(uri: str, tracking_uri: str | None, output_dir: str | os.PathLike):
    """The Predictor and its :class:`ModelId`; a registry alias is pinned to its version."""
    from avarnet.config import TrackingConfig
    from glue import tracking

    if uri.startswith(("models:/", "runs:/")):
        resolved = tracking_uri or tracking.resolve_tracking_uri(TrackingConfig(), output_dir)
        name, version = uri, "run"
        if uri.startswith("models:/"):
            info = tracking.model_version_info(uri, resolved)
            name, version = info["name"], str(info["version"])
            uri_pinned = f"models:/{name}/{version}"
        else:
            uri_pinned = uri
        predictor = tracking.load_predictor(uri_pinned, resolved, output_dir)
        if version == "run":
            name = predictor.meta["model_name"]
            version = "run-" + uri.removeprefix("runs:/").split("/")[0][:12]
    else:
        folder = Path(uri).expanduser().resolve()
        if not folder.is_dir():
            raise CliError(f"{uri}: no such model folder (or use a models:/ or runs:/ URI)")
        predictor = tracking.load_predictor(str(folder), tracking_uri, output_dir)
        name, version = predictor.meta["model_name"], "local-" + _digest_folder(folder)
    from avarnet.features.imported import encoder_problem

    problem = encoder_problem(predictor.spec)
    if problem:  # features imported from external backbones: nothing here can encode video
        raise CliError(f"cannot score video files with {uri}: {problem}")
    digest = hashlib.sha256(predictor.spec.to_json().encode()).hexdigest()[:12]
    return predictor, ModelId(name, version, uri, digest)


# --------------------------------------------------------------------------- answers


def clip_answer(row: dict, pred, labels: list[str], model: ModelId, timings=None) -> dict:
    """One clip's answer in the schema of ``POST /v1/score`` (plus ``video_id``, ``path``)."""
    bounds = np.asarray(row["bounds_s"], np.float64)
    segments = [
        {
            "start_s": float(bounds[i]),
            "end_s": float(bounds[i + 1]),
            "anomaly_score": float(score),
            "top_class": labels[int(top)],
        }
        for i, (score, top) in enumerate(zip(pred.segment_scores, pred.segment_top_class))
    ]
    return {
        "video_id": row["video_id"],
        "path": row["path"],
        "label": pred.label,
        "probabilities": {c: float(p) for c, p in zip(labels, pred.probabilities)},
        "segments": segments,
        "has_audio": bool(row["has_audio"]),
        "duration_s": float(row["duration_s"]),
        "decoder": str(row.get("decoder") or ""),
        "model": model.answer(),
        "timings_ms": timings
        or {
            "upload": 0,
            "decode": 0,
            "encode": 0,
            "classify": 0,
            "total": 0,
            "encoder_batch_size": 0,
        },
    }


class _Outputs:
    """Writes each scored clip (JSON, frame scores) at once and its Parquet row in parts."""

    def __init__(self, out: Path, model: ModelId, frame_scores: bool, flush: int = 64):
        self.out, self.model, self.frame_scores, self.flush_every = out, model, frame_scores, flush
        self.rows: list[dict] = []
        self.n = 0

    def add(self, answer: dict, fps: float) -> None:
        vid = answer["video_id"]
        write_json(answer, self.out / JSON_DIR / self.model.key / f"{vid}.json")
        if self.frame_scores:
            from avarnet.scoring import frame_scores

            n_frames = max(1, int(round(answer["duration_s"] * fps)))
            path = self.out / FRAMES_DIR / self.model.key / f"{vid}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, frame_scores(answer["segments"], n_frames, fps))
        self.rows.append(answer)
        self.n += 1
        if len(self.rows) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        m = self.model
        cols = {
            "video_id": [a["video_id"] for a in self.rows],
            "path": [a["path"] for a in self.rows],
            "label": [a["label"] for a in self.rows],
            "probabilities": [list(a["probabilities"].items()) for a in self.rows],
            "segments": [a["segments"] for a in self.rows],
            "has_audio": [a["has_audio"] for a in self.rows],
            "duration_s": [a["duration_s"] for a in self.rows],
            "decoder": [a["decoder"] for a in self.rows],
            "model_name": [m.name] * len(self.rows),
            "model_version": [m.version] * len(self.rows),
            "model_uri": [m.uri] * len(self.rows),
            "feature_spec_digest": [m.spec_digest] * len(self.rows),
        }
        folder = self.out / SCORES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{uuid.uuid4().hex[:12]}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(pa.table(cols, schema=SCORES_SCHEMA), tmp)
        os.replace(tmp, path)
        self.rows = []


def read_scores(out: str | os.PathLike, model: ModelId | None = None) -> list[dict]:
    """The score rows in ``out`` (of one model version, when given)."""
    files = sorted((Path(out) / SCORES_DIR).glob("part-*.parquet"))
    rows: list[dict] = []
    for f in files:
        for r in pq.read_table(f).to_pylist():
            if model is None or (r["model_name"], r["model_version"]) == (
                model.name,
                model.version,
            ):
                r["probabilities"] = dict(r["probabilities"])
                rows.append(r)
    return rows


# --------------------------------------------------------------------------- planning


def plan_predict(
    rows: list[dict], out: str | os.PathLike, model: ModelId, *, retry_failed: bool = False
) -> ExtractPlan:
    """What is left: clips this model version has not scored, and failed files that have
    changed since (or all failed ones, with ``retry_failed``)."""
    done = {r["video_id"] for r in read_scores(out, model)}
    return split_todo(rows, done, Path(out), retry_failed=retry_failed)


# --------------------------------------------------------------------------- running


@dataclass
class PredictSummary(ExtractSummary):
    """An extraction's counts (clips ok, skipped, failed, clip-seconds per second) plus the
    model that scored and the events found."""

    model: dict[str, str] = field(default_factory=dict)
    events: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "model": self.model,
            "events": self.events,
            "scores": str(Path(self.out_dir) / SCORES_DIR),
            "events_csv": str(Path(self.out_dir) / EVENTS_FILE),
            "report": str(Path(self.out_dir) / REPORT_FILE),
        }


def run_predict(
    rows: list[dict],
    out_dir: str | os.PathLike,
    predictor,
    model: ModelId,
    *,
    threshold: float = 0.5,
    min_gap_s: float = 0.0,
    frame_scores: bool = False,
    retry_failed: bool = False,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    encoder_cpus: float = 1.0,
    decode_cpus: float = 1.0,
    decode_labels: dict[str, str] | None = None,
    encoder_labels: dict[str, str] | None = None,
    fit_resources: bool = True,
    batch_clips: int = 16,
    progress: bool = True,
    logger: Any = None,
) -> PredictSummary:
    """Score ``rows`` with ``predictor`` into ``out_dir`` (Ray must be initialised when
    there is something to do)."""
    from workflows.extract import Assembler

    t0 = time.perf_counter()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_predict(rows, out, model, retry_failed=retry_failed)
    scorer = _Scorer(predictor, model, _Outputs(out, model, frame_scores), batch_clips)
    todo = {r["video_id"]: {**r, "gt_intervals": []} for r in plan.todo}
    asm = Assembler(todo, predictor.spec, scorer.add)
    startup_s = 0.0
    if plan.todo:
        pipeline = {
            "workers": workers,
            "gpus_per_worker": gpus_per_worker,
            "encoder_cpus": encoder_cpus,
            "decode_cpus": decode_cpus,
            "decode_labels": decode_labels,
            "encoder_labels": encoder_labels,
            "fit_resources": fit_resources,
        }
        startup_s = _score(plan.todo, predictor.spec, asm, scorer, t0, progress, pipeline)
    errors = plan.failed_before + asm.errors
    ft.write_errors(errors, out)
    n_events = write_summaries(out, model, threshold=threshold, min_gap_s=min_gap_s)
    summary = PredictSummary(
        out_dir=str(out),
        model=model.answer(),
        clips_total=len(rows),
        clips_ok=scorer.outputs.n,
        clips_skipped=plan.done,
        clips_failed=len(errors),
        clips_failed_before=len(plan.failed_before),
        clip_seconds=scorer.clip_seconds,
        wall_seconds=time.perf_counter() - t0,
        startup_seconds=startup_s,
        events=n_events,
        errors=errors,
    )
    if logger is not None:
        _log_predict(logger, model, summary, out)
    return summary


class _Scorer:
    """Classifies assembled clips in batches of ``batch_clips`` and hands each answer to
    ``outputs``; counts the clip-seconds seen."""

    def __init__(self, predictor, model: ModelId, outputs: _Outputs, batch_clips: int):
        self.predictor, self.model, self.outputs = predictor, model, outputs
        self.labels, self.batch_clips = predictor.labels, batch_clips
        self.pending: list[dict] = []
        self.clip_seconds = 0.0

    def add(self, row: dict) -> None:
        self.clip_seconds += row["duration_s"]
        self.pending.append(row)
        if len(self.pending) >= self.batch_clips:
            self.classify()

    def classify(self) -> None:
        pending = self.pending
        preds = self.predictor.predict(
            [r["audio"] for r in pending],
            [r["visual"] for r in pending],
            [r["has_audio"] for r in pending],
        )
        for row, pred in zip(pending, preds):
            answer = clip_answer(row, pred, self.labels, self.model)
            self.outputs.add(answer, float(row.get("fps") or 25.0))
        pending.clear()


def _score(
    todo: list[dict], spec, asm, scorer: _Scorer, t0: float, progress: bool, pipeline: dict
) -> float:
    """Run the Ray Data pipeline (``pipeline``: its workers and resources) over ``todo``
    into ``asm`` and ``scorer``; returns the seconds to the first finished clip."""
    from glue import console
    from workflows.extract import drain, encoded_chunks

    ds = encoded_chunks(todo, spec, **pipeline)
    bar = console.progress_bar(len(todo), "predict", "clip", disable=not progress)
    try:
        startup_s = drain(
            ds, asm, bar, t0, lambda s: f"{scorer.clip_seconds / max(s, 1e-9):.1f} clip-s/s"
        )
        if scorer.pending:
            scorer.classify()
    finally:
        scorer.outputs.flush()  # keep what finished, even when interrupted
        bar.close()
    return startup_s


def _log_predict(logger: Any, model: ModelId, summary: PredictSummary, out: Path) -> None:
    """Log the run to ``logger`` (a :class:`glue.tracking.RunLogger`): the model, the
    summary's numbers, the events, report and error files."""
    from workflows.extract import log_summary

    logger.log_params({"model_uri": model.uri, "model_version": model.version})
    log_summary(logger, summary)
    for name in (EVENTS_FILE, REPORT_FILE, ft.ERRORS_FILE):
        logger.log_artifact(out / name)


def write_summaries(out: Path, model: ModelId, *, threshold: float, min_gap_s: float) -> int:
    """``events.csv`` and ``report.html`` over every clip this model version scored in
    ``out``; returns the number of events."""
    from avarnet.scoring import find_events, write_events_csv
    from workflows.report import write_report

    clips = []
    for r in sorted(read_scores(out, model), key=lambda r: r["video_id"]):
        clips.append({**r, "model": model.answer()})
    events = [
        e
        for c in clips
        for e in find_events(c["video_id"], c["path"], c["segments"], threshold, min_gap_s)
    ]
    write_events_csv(events, out / EVENTS_FILE)
    version = f"v{model.version}" if model.version.isdigit() else model.version
    title = f"avarnet: {len(clips)} clips scored by {model.name} {version}"
    write_report(clips, events, out / REPORT_FILE, title=title, threshold=threshold)
    return len(events)


def score_one_file(path: str, predictor, model: ModelId) -> dict:
    """One clip in this process (no Ray): the same encoders and Predictor."""
    from avarnet.data.decode import DecodeError
    from avarnet.features.backbones import build_encoders

    t0 = time.perf_counter()
    try:
        feats = build_encoders(predictor.spec).encode_clip(path)
    except DecodeError as err:
        raise CliError(f"{path}: {err.reason}") from None
    t1 = time.perf_counter()
    (pred,) = predictor.predict([feats.audio], [feats.visual], [feats.has_audio])
    t2 = time.perf_counter()
    row = {
        "video_id": os.path.splitext(os.path.basename(path))[0],
        "path": os.path.abspath(path),
        "bounds_s": feats.bounds_s,
        "has_audio": feats.has_audio,
        "duration_s": feats.info.duration_s,
        "decoder": feats.info.decoder,
    }
    ms = {
        "upload": 0.0,
        "decode": 0.0,
        "encode": 1e3 * (t1 - t0),
        "classify": 1e3 * (t2 - t1),
        "total": 1e3 * (t2 - t0),
        "encoder_batch_size": 1,
    }
    return clip_answer(row, pred, predictor.labels, model, ms)


def text_timeline(answer: dict, width: int = 60) -> str:
    """A clip's answer for a terminal: label, top classes, one line per segment."""
    top = sorted(answer["probabilities"].items(), key=lambda kv: -kv[1])[:3]
    lines = [
        f"label: {answer['label']}   ({answer['duration_s']:.1f} s, "
        f"{'audio' if answer['has_audio'] else 'no audio'}, decoder {answer['decoder']})",
        "top:   " + ", ".join(f"{c} {p:.3f}" for c, p in top),
    ]
    segs = answer["segments"]
    step = max(1, -(-len(segs) // 40))  # at most about 40 lines
    for s in segs[::step]:
        bar = "#" * int(round(s["anomaly_score"] * width / 2))
        lines.append(
            f"{s['start_s']:8.1f}-{s['end_s']:<8.1f} {s['anomaly_score']:.3f} {bar:<{width // 2}} "
            f"{s['top_class']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m workflows.predict ...`` is ``avarnet predict ...`` (for ``ray job submit``)."""
    from workflows.cli import main as cli_main

    return cli_main(["predict", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
