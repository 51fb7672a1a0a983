"""The feature table: Parquet, one row per clip.

Columns: the manifest columns (``video_id``, ``path``, ``label``, ``labels``, ``split``,
``gt_intervals``, ``gt_available``), ``n_segments`` (T), ``duration_s``, ``has_audio``,
``decoder`` (``"decord"`` or ``"pyav"``: which decoder read the clip's frames; ``""`` in
tables written before it was recorded), ``audio`` (T x Da float32, a list of fixed-size lists), ``visual`` (T x Dv float32) and
``segment_gt`` (T int8, 1 = anomalous segment). One step of T is one segment of the
:class:`~avarnet.features.spec.FeatureSpec` (``segment_seconds``, or ``segment_frames``
frames).

A table is a folder of ``part-*.parquet`` files (written aside, then renamed, so a part is
never half-written) with the FeatureSpec in every part's schema metadata
(``avarnet.feature_spec``) and as ``feature_spec.json`` beside them. Failed clips go to
``errors.parquet`` (``video_id``, ``path``, ``stage``, ``message``).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from avarnet.features.spec import FeatureSpec

SPEC_KEY = b"avarnet.feature_spec"
SPEC_FILE = "feature_spec.json"
ERRORS_FILE = "errors.parquet"
PART_GLOB = "part-*.parquet"

ERROR_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("path", pa.string()),
        ("stage", pa.string()),
        ("message", pa.string()),
        # size and mtime of the file when it failed: a re-run retries it only once it changed
        ("fingerprint", pa.string()),
    ]
)


def table_schema(spec: FeatureSpec) -> pa.Schema:
    """The Arrow schema of a feature table for ``spec``, with the spec in its metadata."""
    fields = [
        ("video_id", pa.string()),
        ("path", pa.string()),
        ("label", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("split", pa.string()),
        ("gt_intervals", pa.list_(pa.list_(pa.int64(), 2))),
        ("gt_available", pa.bool_()),
        ("n_segments", pa.int32()),
        ("duration_s", pa.float64()),
        ("has_audio", pa.bool_()),
        ("decoder", pa.string()),
        ("audio", pa.list_(pa.list_(pa.float32(), spec.audio_dim))),
        ("visual", pa.list_(pa.list_(pa.float32(), spec.visual_dim))),
        ("segment_gt", pa.list_(pa.int8())),
    ]
    return pa.schema(fields, metadata={SPEC_KEY: spec.to_json().encode()})


def _nested(arrays: list[np.ndarray], dim: int) -> pa.Array:
    """List of ``(T_i, dim)`` float32 arrays -> ``list<fixed_size_list<float32, dim>>``."""
    lengths = np.array([len(a) for a in arrays], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate([np.asarray(a, np.float32).reshape(-1, dim) for a in arrays])
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim)
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def clips_to_table(rows: list[dict], spec: FeatureSpec) -> pa.Table:
    """Build a table from clip dicts holding the manifest columns plus ``audio`` ``(T, Da)``,
    ``visual`` ``(T, Dv)``, ``segment_gt`` ``(T,)``, ``duration_s``, ``has_audio`` and
    optionally ``decoder``."""
    schema = table_schema(spec)
    cols = {
        "video_id": [r["video_id"] for r in rows],
        "path": [r["path"] for r in rows],
        "label": [r["label"] for r in rows],
        "labels": [list(r.get("labels") or [r["label"]]) for r in rows],
        "split": [r.get("split") or "" for r in rows],
        "gt_intervals": [[list(map(int, iv)) for iv in r.get("gt_intervals") or []] for r in rows],
        "gt_available": [bool(r.get("gt_available", False)) for r in rows],
        "n_segments": [len(r["visual"]) for r in rows],
        "duration_s": [float(r["duration_s"]) for r in rows],
        "has_audio": [bool(r["has_audio"]) for r in rows],
        "decoder": [str(r.get("decoder") or "") for r in rows],
    }
    arrays = [pa.array(cols[name], type=schema.field(name).type) for name in cols]
    arrays.append(_nested([r["audio"] for r in rows], spec.audio_dim))
    arrays.append(_nested([r["visual"] for r in rows], spec.visual_dim))
    arrays.append(
        pa.array([np.asarray(r["segment_gt"], np.int8) for r in rows], type=pa.list_(pa.int8()))
    )
    return pa.Table.from_arrays(arrays, schema=schema)


def _atomic_write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_part(rows: list[dict], out_dir: str | os.PathLike, spec: FeatureSpec) -> Path:
    """Write clips as a new part file (atomically) and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"part-{uuid.uuid4().hex[:12]}.parquet"
    _atomic_write(clips_to_table(rows, spec), path)
    return path


def file_fingerprint(path: str | os.PathLike) -> str:
    """``"<size>:<mtime_ns>"`` of a file, ``"missing"`` when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def write_errors(errors: list[dict], out_dir: str | os.PathLike) -> Path:
    """Write the error table (``video_id``, ``path``, ``stage``, ``message``,
    ``fingerprint``) atomically."""
    path = Path(out_dir) / ERRORS_FILE
    cols = {name: [str(e.get(name, "")) for e in errors] for name in ERROR_SCHEMA.names}
    _atomic_write(pa.table(cols, schema=ERROR_SCHEMA), path)
    return path


def read_errors(out_dir: str | os.PathLike) -> list[dict]:
    """The error table's rows (tables written before ``fingerprint`` existed read it as "")."""
    path = Path(out_dir) / ERRORS_FILE
    if not path.exists():
        return []
    return [{"fingerprint": "", **row} for row in pq.read_table(path).to_pylist()]


def part_files(out_dir: str | os.PathLike) -> list[Path]:
    return sorted(Path(out_dir).glob(PART_GLOB))


def save_spec(spec: FeatureSpec, out_dir: str | os.PathLike) -> Path:
    path = Path(out_dir) / SPEC_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_spec(path: str | os.PathLike) -> FeatureSpec:
    """The FeatureSpec of a feature table folder (or of one Parquet file)."""
    p = Path(path)
    if p.is_dir():
        if (p / SPEC_FILE).exists():
            return FeatureSpec.from_json((p / SPEC_FILE).read_text())
        parts = part_files(p)
        if not parts:
            raise FileNotFoundError(f"{p}: not a feature table (no {SPEC_FILE}, no part files)")
        p = parts[0]
    meta = pq.read_schema(p).metadata or {}
    if SPEC_KEY not in meta:
        raise ValueError(f"{p}: Parquet file without avarnet.feature_spec metadata")
    return FeatureSpec.from_json(meta[SPEC_KEY].decode())


def done_video_ids(out_dir: str | os.PathLike) -> set[str]:
    """Video ids already written to the table's part files."""
    ids: set[str] = set()
    for part in part_files(out_dir):
        ids.update(pq.read_table(part, columns=["video_id"]).column(0).to_pylist())
    return ids


def nested_to_numpy(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """``list<fixed_size_list<float32, D>>`` -> list of ``(T_i, D)`` float32 arrays (zero-copy
    where Arrow allows)."""
    if isinstance(column, pa.ChunkedArray):
        return [a for chunk in column.chunks for a in nested_to_numpy(chunk)]
    dim = column.type.value_type.list_size
    offsets = column.offsets.to_numpy()
    flat = column.values.values.to_numpy(zero_copy_only=False)
    base = column.values.offset
    flat = flat[base * dim :].reshape(-1, dim) if base else flat.reshape(-1, dim)
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(column))]


@dataclass
class FeatureSet:
    """A feature table in memory: per-clip arrays plus the manifest columns."""

    spec: FeatureSpec
    video_id: list[str]
    label: list[str]
    labels: list[list[str]]
    split: list[str]
    audio: list[np.ndarray]  # (T_i, Da) float32
    visual: list[np.ndarray]  # (T_i, Dv) float32
    has_audio: np.ndarray  # (N,) bool
    segment_gt: list[np.ndarray]  # (T_i,) int8
    gt_intervals: list[list[list[int]]]  # anomalous frame intervals [start, end) per clip
    gt_available: np.ndarray  # (N,) bool
    duration_s: np.ndarray  # (N,) float64

    def __len__(self) -> int:
        return len(self.video_id)

    def select(self, mask: np.ndarray) -> FeatureSet:
        idx = np.flatnonzero(mask)
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return FeatureSet(
            spec=self.spec,
            video_id=pick(self.video_id),
            label=pick(self.label),
            labels=pick(self.labels),
            split=pick(self.split),
            audio=pick(self.audio),
            visual=pick(self.visual),
            has_audio=self.has_audio[idx],
            segment_gt=pick(self.segment_gt),
            gt_intervals=pick(self.gt_intervals),
            gt_available=self.gt_available[idx],
            duration_s=self.duration_s[idx],
        )


def table_to_featureset(table: pa.Table, spec: FeatureSpec) -> FeatureSet:
    return FeatureSet(
        spec=spec,
        video_id=table.column("video_id").to_pylist(),
        label=table.column("label").to_pylist(),
        labels=table.column("labels").to_pylist(),
        split=table.column("split").to_pylist(),
        audio=nested_to_numpy(table.column("audio")),
        visual=nested_to_numpy(table.column("visual")),
        has_audio=np.asarray(table.column("has_audio").to_pylist(), dtype=bool),
        segment_gt=[np.asarray(x, np.int8) for x in table.column("segment_gt").to_pylist()],
        gt_intervals=table.column("gt_intervals").to_pylist(),
        gt_available=np.asarray(table.column("gt_available").to_pylist(), dtype=bool),
        duration_s=np.asarray(table.column("duration_s").to_pylist(), dtype=np.float64),
    )


def read_features(path: str | os.PathLike, splits: list[str] | None = None) -> FeatureSet:
    """Read a feature table folder (all parts), optionally only some splits, sorted by
    ``video_id`` so the order does not depend on how the parts were written."""
    p = Path(path)
    spec = read_spec(p)
    files = part_files(p) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"{p}: feature table has no part files")
    # Parts written before a column existed (``decoder``) read it as null.
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    if splits is not None:
        table = table.filter(pc.is_in(table.column("split"), pa.array(splits)))
    table = table.sort_by("video_id")
    return table_to_featureset(table, spec)
