"""Dataset readers: a dataset on disk -> manifest rows (one plain dict per clip).

A manifest row (see ``docs/INTERFACES.md``)::

    video_id      str   unique, stable: the path relative to the dataset root, without
                        extension, '/' separators
    path          str   absolute path of the video file
    label         str   class name (the first label of a multi-label clip)
    labels        list[str]  all labels (== [label] for single-label data)
    split         "train" | "val" | "test"
    gt_intervals  list[[start_frame, end_frame]]  anomalous frame intervals, end exclusive
    gt_available  bool  whether frame-level ground truth exists for this clip ([] + True
                        means "annotated, nothing anomalous")

Layouts (:func:`read_manifest`, ``format=``):

- ``folders`` (VAAR style): a folder per class with the videos inside (any depth below
  it); the class is the folder's name. If the top level holds ``train``/``val``/``test``
  folders (also ``training``, ``valid``, ``validation``, ``testing``; any case), the class
  folders inside them, and those folders give the split.
- ``csv``: a header with at least ``path`` and ``label`` (or ``labels``); optional
  ``split``, ``video_id``, ``labels`` (';'-joined), ``gt_intervals`` (``s-e;s-e``) and
  ``gt_available`` (true/false; default: whether ``gt_intervals`` is non-empty); other
  columns are ignored. Relative paths are relative to the CSV's folder; the default
  ``video_id`` is the path relative to that folder without extension. This is also the
  format :func:`write_manifest_csv` writes, and the two round-trip exactly.
- ``xd-violence``: a folder (any depth) of videos named
  ``<source>__#<span>_label_<L1>-<L2>-<L3>`` with label codes :data:`XD_LABEL_CODES`
  (``0`` = unused slot). ``label`` is the first code's name, ``labels`` all non-``0``
  codes' names. Optional test annotations (``name s1 e1 s2 e2 ...`` per line, frame
  indices, end exclusive; a stray ``.mp4`` on the name is accepted).

With ``format="auto"`` a folder holding a ``manifest.csv`` (what ``avarnet synth`` writes
beside its clips, and ``avarnet manifest --out``) is read as that CSV: its splits and frame
intervals are the dataset's, and walking the folders would lose both.

Rows without a split get the deterministic stratified split of :func:`assign_splits`.
Anything wrong with one clip or one annotation line is a *problem*
(``{"file": ..., "reason": ...}``) listed in the result, never a crash; a missing path or a
dataset with no clip at all raises :class:`ManifestError`.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "MANIFEST_FILE",
    "SPLITS",
    "VIDEO_EXTENSIONS",
    "XD_LABEL_CODES",
    "ManifestError",
    "ManifestResult",
    "assign_splits",
    "detect_format",
    "frame_ground_truth",
    "parse_xd_name",
    "read_manifest",
    "read_xd_annotations",
    "segment_ground_truth",
    "write_manifest_csv",
]

VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v",
    # containers the PyAV fallback reads (see avarnet.data.decode)
    ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".vob", ".wmv", ".asf", ".ogv", ".ogg", ".flv",
    ".3gp",
)  # fmt: skip
SPLITS = ("train", "val", "test")
FORMATS = ("auto", "folders", "csv", "xd-violence")
# A dataset folder's own manifest: read instead of walking the folder (format "auto").
MANIFEST_FILE = "manifest.csv"
CSV_COLUMNS = ("video_id", "path", "label", "labels", "split", "gt_intervals", "gt_available")

# XD-Violence label codes (there is no B3). Source: VadCLIP's label map, the HF loader.
XD_LABEL_CODES = {
    "A": "normal",
    "B1": "fighting",
    "B2": "shooting",
    "B4": "riot",
    "B5": "abuse",
    "B6": "car_accident",
    "G": "explosion",
}
XD_NORMAL_CODE = "A"

# A name that looks like XD-Violence (codes not validated: a bad code is a problem, and
# it still counts towards recognising the layout).
_XD_NAME_RE = re.compile(r"__#.*_label_[0-9A-Za-z]+(-[0-9A-Za-z]+)*$")
_SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


class ManifestError(Exception):
    """A dataset that cannot be read at all (missing path, no clips, bad CSV header)."""


@dataclass
class ManifestResult:
    """What a reader found.

    Attributes:
        rows: manifest rows (module docstring), in a stable order (sorted paths for
            folder layouts, file order for CSV).
        problems: ``{"file": str, "reason": str}`` per skipped clip or annotation line.
        format: the layout read (``folders``, ``csv`` or ``xd-violence``).
        root: the dataset folder (or the CSV's folder), absolute.
    """

    rows: list[dict]
    problems: list[dict] = field(default_factory=list)
    format: str = ""
    root: str = ""

    def summary(self) -> dict:
        """Counts for people and logs: ``format``, ``clips``, ``label_counts`` (per label
        name, sorted; a multi-label clip counts once for each of its labels),
        ``split_counts`` (train/val/test), ``annotated_clips`` (rows with
        ``gt_available``) and ``problems``."""
        labels: dict[str, int] = {}
        for row in self.rows:
            for name in row["labels"]:
                labels[name] = labels.get(name, 0) + 1
        splits = {s: 0 for s in SPLITS}
        for row in self.rows:
            splits[row["split"]] = splits.get(row["split"], 0) + 1
        return {
            "format": self.format,
            "clips": len(self.rows),
            "label_counts": dict(sorted(labels.items())),
            "split_counts": splits,
            "annotated_clips": sum(bool(r.get("gt_available")) for r in self.rows),
            "problems": list(self.problems),
        }


# --------------------------------------------------------------------------- entry point
def read_manifest(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    annotations: str | os.PathLike | None = None,
    seed: int = 0,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
) -> ManifestResult:
    """Read a dataset in one of the layouts of the module docstring.

    Args:
        path: a dataset folder or a manifest CSV.
        format: ``auto`` (see :func:`detect_format`), ``folders``, ``csv`` or ``xd-violence``.
        annotations: XD-Violence style frame annotations (``name s1 e1 ...``). Rows of the
            named videos get those ``gt_intervals`` and ``gt_available=True``; with the
            ``xd-violence`` layout they also go to the test split unless a folder says
            otherwise. A line naming no video is a problem.
        seed, split_fractions: the split of rows without one (:func:`assign_splits`).

    Raises:
        ManifestError: missing path, unknown format, unreadable CSV header, or no clip found.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise ManifestError(f"{path}: no such file or directory")
    if format not in FORMATS:
        raise ManifestError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "csv" and os.path.isdir(path) and format == "auto":
        path = os.path.join(path, MANIFEST_FILE)
    if fmt == "csv":
        if os.path.isdir(path):
            raise ManifestError(f"{path}: is a directory, expected a CSV file")
        result = _read_csv(path)
    else:
        if not os.path.isdir(path):
            raise ManifestError(f"{path}: is a file, expected a dataset folder for {fmt!r}")
        result = _read_xd(path) if fmt == "xd-violence" else _read_folders(path)
    if annotations is not None:
        _apply_annotations(result, annotations)
    if fmt == "xd-violence":
        for row in result.rows:
            if not row["split"] and row["gt_available"]:
                row["split"] = "test"
    if not result.rows:
        raise ManifestError(
            f"{path}: no clips found ({fmt} layout; video extensions "
            f"{', '.join(VIDEO_EXTENSIONS)}; {len(result.problems)} problem(s))"
        )
    assign_splits(result.rows, seed, split_fractions)
    if fmt == "xd-violence":
        # Normal videos have no annotation line: in the test split they are ground-truthed
        # as "nothing anomalous" (the reference make_gt.py gives them all-zero frames).
        for row in result.rows:
            if row["split"] == "test" and row["labels"] == [XD_LABEL_CODES[XD_NORMAL_CODE]]:
                row["gt_available"] = True
    return result


def detect_format(path: str | os.PathLike) -> str:
    """``csv`` for a ``.csv`` file or a folder holding a :data:`MANIFEST_FILE`;
    ``xd-violence`` for a folder where at least half of the video names follow the
    XD-Violence pattern; else ``folders``.

    Raises:
        ManifestError: a file that is not a ``.csv``.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        if path.lower().endswith(".csv"):
            return "csv"
        raise ManifestError(f"{path}: not a dataset folder or a .csv manifest")
    if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
        return "csv"
    stems = [Path(rel).stem for rel in _walk_videos(path)]
    xd = sum(bool(_XD_NAME_RE.search(s)) for s in stems)
    return "xd-violence" if stems and 2 * xd >= len(stems) else "folders"


# --------------------------------------------------------------------------- walking
def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def walk_files(root: str | os.PathLike, keep: Callable[[str], bool]) -> list[str]:
    """Files below ``root`` whose name ``keep`` accepts, as sorted '/'-separated relative
    paths. Hidden files and folders are skipped; symlinked folders are followed once (no
    cycles)."""
    root = os.fspath(root)
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if not name.startswith(".") and keep(name):
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def _walk_videos(root: str) -> list[str]:
    """Video files below ``root`` (see :func:`walk_files`)."""
    return walk_files(root, _is_video)


def _video_id(rel: str) -> str:
    return os.path.splitext(rel)[0]


def _row(root: str, rel: str, labels: list[str], split: str | None) -> dict:
    return {
        "video_id": _video_id(rel),
        "path": os.path.normpath(os.path.join(root, rel)),
        "label": labels[0],
        "labels": labels,
        "split": split,
        "gt_intervals": [],
        "gt_available": False,
    }


def _add_unique(result: ManifestResult, row: dict, seen: dict[str, str]) -> None:
    """Append ``row`` unless its video_id is taken (then it is a problem)."""
    vid = row["video_id"]
    if vid in seen:
        result.problems.append(
            {"file": row["path"], "reason": f"duplicate video_id {vid!r} (also {seen[vid]})"}
        )
        return
    seen[vid] = row["path"]
    result.rows.append(row)


# --------------------------------------------------------------------------- folders
def _read_folders(root: str) -> ManifestResult:
    result = ManifestResult(rows=[], format="folders", root=root)
    videos = _walk_videos(root)
    top_dirs = sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and d[0] != "."
    )
    split_mode = any(d.lower() in _SPLIT_FOLDERS for d in top_dirs)
    depth = 2 if split_mode else 1  # path components above the class folder's content
    seen: dict[str, str] = {}
    classes_with_videos: set[str] = set()
    for rel in videos:
        parts = rel.split("/")
        full = os.path.join(root, *parts)
        split = None
        if split_mode:
            split = _SPLIT_FOLDERS.get(parts[0].lower())
            if split is None:
                reason = "outside the train/val/test folders"
                result.problems.append({"file": full, "reason": reason})
                continue
        if len(parts) <= depth:
            result.problems.append({"file": full, "reason": "not inside a class folder"})
            continue
        label = parts[depth - 1]
        classes_with_videos.add("/".join(parts[:depth]))
        _add_unique(result, _row(root, rel, [label], split), seen)
    # Class folders without any video are listed, so a typo in a layout is visible.
    parents = [os.path.join(root, d) for d in top_dirs]
    if split_mode:
        parents = [p for p in parents if os.path.basename(p).lower() in _SPLIT_FOLDERS]
        class_dirs = [
            os.path.join(p, d)
            for p in parents
            for d in sorted(os.listdir(p))
            if os.path.isdir(os.path.join(p, d)) and d[0] != "."
        ]
    else:
        class_dirs = parents
    for d in class_dirs:
        rel = os.path.relpath(d, root).replace(os.sep, "/")
        if rel not in classes_with_videos:
            result.problems.append({"file": d, "reason": "no video files"})
    return result


# --------------------------------------------------------------------------- csv
def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_intervals(text: str) -> list[list[int]]:
    """``"s-e;s-e"`` -> ``[[s, e], ...]`` (end exclusive, 0 <= s < e)."""
    out = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        s, sep, e = part.partition("-")
        if not sep:
            raise ValueError(f"bad interval {part!r} (expected start-end)")
        start, end = int(s), int(e)
        if not 0 <= start < end:
            raise ValueError(f"bad interval {part!r} (need 0 <= start < end)")
        out.append([start, end])
    return out


def _format_intervals(intervals: Iterable[Sequence[int]]) -> str:
    return ";".join(f"{int(s)}-{int(e)}" for s, e in intervals)


def _read_csv(path: str) -> ManifestResult:
    base = os.path.dirname(path)
    result = ManifestResult(rows=[], format="csv", root=base)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        if "path" not in header or not {"label", "labels"} & set(header):
            raise ManifestError(
                f"{path}: a manifest CSV needs a header with 'path' and 'label' "
                f"(optional: {', '.join(c for c in CSV_COLUMNS if c not in ('path', 'label'))});"
                f" found {header}"
            )
        reader.fieldnames = header
        seen: dict[str, str] = {}
        for lineno, rec in enumerate(reader, start=2):
            rec = {k: (v or "").strip() for k, v in rec.items() if k is not None}
            where = f"{path}:{lineno}"
            try:
                row = _csv_row(base, rec)
            except ValueError as err:
                result.problems.append({"file": where, "reason": str(err)})
                continue
            if not os.path.isfile(row["path"]):
                result.problems.append({"file": row["path"], "reason": "no such file"})
                continue
            _add_unique(result, row, seen)
    return result


def _csv_row(base: str, rec: dict[str, str]) -> dict:
    if not rec.get("path"):
        raise ValueError("empty path")
    full = os.path.normpath(os.path.join(base, rec["path"]))
    labels = [x.strip() for x in rec.get("labels", "").split(";") if x.strip()]
    label = rec.get("label", "")
    if label and labels and label != labels[0]:
        if label not in labels:
            raise ValueError(f"label {label!r} is not among labels {labels}")
        labels.remove(label)
        labels.insert(0, label)
    labels = list(dict.fromkeys(labels or ([label] if label else [])))
    if not labels:
        raise ValueError("empty label")
    split = rec.get("split", "").lower()
    if split:
        split = _SPLIT_FOLDERS.get(split)
        if split is None:
            raise ValueError(f"unknown split {rec['split']!r} (expected train, val or test)")
    gt_intervals = _parse_intervals(rec.get("gt_intervals", ""))
    avail = rec.get("gt_available", "")
    gt_available = _parse_bool(avail) if avail else bool(gt_intervals)
    vid = rec.get("video_id") or _video_id(os.path.relpath(full, base).replace(os.sep, "/"))
    return {
        "video_id": vid,
        "path": full,
        "label": labels[0],
        "labels": labels,
        "split": split or None,
        "gt_intervals": gt_intervals,
        "gt_available": gt_available,
    }


def write_manifest_csv(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write rows as a manifest CSV (columns :data:`CSV_COLUMNS`), atomically.

    ``path`` is written relative to the CSV's folder when the video lies below it (so a
    dataset folder can be moved as a whole), else absolute. ``labels`` are joined by
    ';', ``gt_intervals`` written as ``s-e;s-e``, ``gt_available`` as true/false; a row
    without a split gets an empty cell. ``read_manifest(path)`` gives the same rows back.

    Returns:
        The CSV's path.
    """
    out = Path(os.path.abspath(os.fspath(path)))
    out.parent.mkdir(parents=True, exist_ok=True)
    base = str(out.parent)
    # A temporary name beside the target (same file system, so os.replace is atomic);
    # opened with mode "x" so that it gets the usual umask permissions.
    tmp = os.path.join(base, f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for row in rows:
                labels = list(row.get("labels") or [row["label"]])
                if any(";" in x for x in labels):
                    raise ValueError(f"{row['video_id']}: a label contains ';': {labels}")
                full = os.path.abspath(row["path"])
                rel = os.path.relpath(full, base)
                shown = full if rel.startswith("..") else rel.replace(os.sep, "/")
                writer.writerow(
                    [
                        row["video_id"],
                        shown,
                        row["label"],
                        ";".join(labels),
                        row.get("split") or "",
                        _format_intervals(row.get("gt_intervals") or []),
                        "true" if row.get("gt_available") else "false",
                    ]
                )
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return out


# --------------------------------------------------------------------------- xd-violence
def parse_xd_name(name: str) -> list[str]:
    """Label names of an XD-Violence video name (with or without extension).

    ``"Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6"`` -> ``["explosion", "shooting",
    "car_accident"]``; ``"v=S-7rRLrxnVQ__#1_label_B4-0-0"`` -> ``["riot"]``.

    Raises:
        ValueError: no ``_label_`` part, an unknown code, an empty first slot, more than
            three codes, or ``A`` (normal) mixed with violent codes.
    """
    stem = os.path.splitext(name)[0] if _is_video(name) else name
    head, sep, codes_text = stem.rpartition("_label_")
    if not sep or not head:
        raise ValueError("not an XD-Violence name (expected '<source>__#<span>_label_<codes>')")
    codes = codes_text.split("-")
    if len(codes) > 3:
        raise ValueError(f"more than three label codes: {codes_text!r}")
    if codes[0] == "0":
        raise ValueError(f"first label slot is empty: {codes_text!r}")
    unknown = [c for c in codes if c != "0" and c not in XD_LABEL_CODES]
    if unknown:
        raise ValueError(
            f"unknown label code(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(XD_LABEL_CODES)}, 0 = unused slot)"
        )
    used = list(dict.fromkeys(c for c in codes if c != "0"))
    if XD_NORMAL_CODE in used and len(used) > 1:
        raise ValueError(f"normal code A combined with violent codes: {codes_text!r}")
    return [XD_LABEL_CODES[c] for c in used]


def _xd_split(rel: str) -> str | None:
    """train/test from the folders above a video (a component named, or starting with,
    'train' or 'test', any case)."""
    for part in rel.split("/")[:-1]:
        low = part.lower()
        if low.startswith("train"):
            return "train"
        if low.startswith("test"):
            return "test"
    return None


def _read_xd(root: str) -> ManifestResult:
    result = ManifestResult(rows=[], format="xd-violence", root=root)
    seen: dict[str, str] = {}
    for rel in _walk_videos(root):
        full = os.path.normpath(os.path.join(root, rel))
        try:
            labels = parse_xd_name(os.path.basename(rel))
        except ValueError as err:
            result.problems.append({"file": full, "reason": str(err)})
            continue
        _add_unique(result, _row(root, rel, labels, _xd_split(rel)), seen)
    return result


def read_xd_annotations(
    path: str | os.PathLike,
) -> tuple[dict[str, list[list[int]]], list[dict]]:
    """Parse an XD-Violence annotation file: one ``name s1 e1 s2 e2 ...`` line per video.

    Names lose a stray video extension (``.mp4``); values are frame indices, end exclusive.

    Returns:
        ``({name: [[s, e], ...]}, problems)``; a malformed line (odd count of numbers, a
        non-integer, ``e <= s``, a repeated name) is a problem and is skipped.

    Raises:
        ManifestError: the file does not exist.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: no such file or directory")
    out: dict[str, list[list[int]]] = {}
    problems: list[dict] = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            name = fields[0]
            if _is_video(name):
                name = os.path.splitext(name)[0]
            where = f"{path}:{lineno}"
            nums = fields[1:]
            if len(nums) % 2:
                problems.append(
                    {"file": where, "reason": f"{name}: odd count of numbers ({len(nums)})"}
                )
                continue
            try:
                values = [int(x) for x in nums]
            except ValueError:
                problems.append({"file": where, "reason": f"{name}: non-integer frame index"})
                continue
            pairs = [[values[i], values[i + 1]] for i in range(0, len(values), 2)]
            bad = [p for p in pairs if not 0 <= p[0] < p[1]]
            if bad:
                problems.append(
                    {"file": where, "reason": f"{name}: bad interval {bad[0]} (need 0 <= s < e)"}
                )
                continue
            if name in out:
                problems.append({"file": where, "reason": f"{name}: annotated twice"})
                continue
            out[name] = pairs
    return out, problems


def _apply_annotations(result: ManifestResult, annotations: str | os.PathLike) -> None:
    """Attach annotation intervals to rows matched by file stem (or video_id)."""
    table, problems = read_xd_annotations(annotations)
    result.problems.extend(problems)
    by_name: dict[str, list[dict]] = {}
    for row in result.rows:
        by_name.setdefault(Path(row["path"]).stem, []).append(row)
        if row["video_id"] != Path(row["path"]).stem:
            by_name.setdefault(row["video_id"], []).append(row)
    for name, intervals in table.items():
        matched = by_name.get(name)
        if not matched:
            result.problems.append(
                {"file": os.path.abspath(annotations), "reason": f"{name}: no such video"}
            )
            continue
        for row in matched:
            row["gt_intervals"] = [list(p) for p in intervals]
            row["gt_available"] = True


# --------------------------------------------------------------------------- splits
def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder counts for train/val/test (ties go to test, then val), then at
    least one train clip, and one val and one test clip where ``n >= 3`` and that
    split's fraction is positive."""
    quotas = [f * n for f in fractions]
    counts = [int(q) for q in quotas]
    order = sorted(range(3), key=lambda i: (-(quotas[i] - counts[i]), -i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    need = [1, int(n >= 3 and fractions[1] > 0), int(n >= 3 and fractions[2] > 0)]
    for i in range(3):
        while counts[i] < need[i]:
            donor = max(range(3), key=lambda j: (counts[j] - need[j], -j))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def assign_splits(
    rows: list[dict], seed: int = 0, fractions: Sequence[float] = (0.7, 0.15, 0.15)
) -> list[dict]:
    """Give rows without a split a deterministic stratified train/val/test split, in place.

    Per primary label: the rows without a split, sorted by ``video_id``, are shuffled by a
    ``numpy`` Generator seeded from ``(seed, crc32(label))`` (so one class's split does not
    depend on the others), then the first ``~fractions[0]`` go to train, the next
    ``~fractions[1]`` to val, the rest to test; each class keeps at least one train clip,
    and one val and one test clip where it has three or more. Rows that already have a
    split keep it.

    Returns:
        ``rows`` (the same list).
    """
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or min(fr) < 0 or sum(fr) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    fr = [f / sum(fr) for f in fr]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("split") not in SPLITS:
            groups.setdefault(row["label"], []).append(row)
    for label, group in groups.items():
        group.sort(key=lambda r: r["video_id"])
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        order = rng.permutation(len(group))
        n_train, n_val, _ = _split_counts(len(group), fr)
        for rank, i in enumerate(order):
            group[i]["split"] = (
                "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            )
    return rows


# --------------------------------------------------------------------------- ground truth
def frame_ground_truth(gt_intervals: Iterable[Sequence[int]], n_frames: int) -> np.ndarray:
    """Per-frame anomaly labels: ``(n_frames,)`` uint8, 1 inside any ``[start, end)``
    interval (frame indices, clipped to the clip)."""
    gt = np.zeros(int(n_frames), dtype=np.uint8)
    for start, end in gt_intervals:
        gt[max(int(start), 0) : max(int(end), 0)] = 1
    return gt


def segment_ground_truth(
    gt_intervals: Iterable[Sequence[int]], frame_bounds: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Per-segment anomaly labels: ``(T,)`` int8, 1 when any frame of the segment is
    anomalous.

    Args:
        gt_intervals: ``[[start_frame, end_frame], ...]``, end exclusive.
        frame_bounds: ``(T + 1,)`` non-decreasing frame indices; segment ``t`` holds frames
            ``[frame_bounds[t], frame_bounds[t + 1])`` (an empty segment is 0).
    """
    fb = np.asarray(frame_bounds, dtype=np.int64)
    if fb.ndim != 1 or len(fb) < 1 or fb[0] < 0 or np.any(np.diff(fb) < 0):
        raise ValueError("frame_bounds must be a 1-D non-decreasing array of frame indices >= 0")
    gt = frame_ground_truth(gt_intervals, int(fb[-1]))
    csum = np.concatenate([[0], np.cumsum(gt, dtype=np.int64)])
    return (csum[fb[1:]] - csum[fb[:-1]] > 0).astype(np.int8)
