"""Released features as a feature table: XD-Violence's I3D RGB + VGGish ``.npy`` files
(the features HL-Net, MACIL-SD and HyperVD train on) turned into the project's Parquet
table, so Train, Tune and evaluation run on them unchanged.

The released layout (format ``xd-i3d-vggish``), and the conventions made explicit here:

- **Files.** Per video and crop, ``<name>__<k>.npy`` for ``k`` = 0 (centre) to 4
  (corners): ``(T, 1024)`` float32 I3D RGB features, one row per 16-frame snippet. Per
  video, ``<name>__vggish.npy``: ``(T_a, 128)`` VGGish features. ``<name>`` is the video's
  XD-Violence name (``...__#..._label_B2-G-0``; labels from
  :func:`~avarnet.data.manifest.parse_xd_name`, so an unknown code is an error naming the
  file). The files may lie anywhere below the folder given; other ``.npy`` files are
  ignored and counted.
- **Five crops.** ``crops="mean"``: one row per video, the mean of the five crops.
  ``crops="each"``: in the training split, one row per crop (``video_id``
  ``<name>__<k>``, same labels), as HL-Net trains; validation and test rows are always the
  crop mean, one per video, so that each test video counts once in frame-level AP (the
  reference test script averages the five crops' *scores*; the mean of their features is
  the closest a one-row-per-video table gets). A crop missing is an error.
- **Audio-to-RGB pairing.** By name: ``<name>__vggish.npy`` goes with ``<name>__<k>.npy``
  (what the reference code's index rule, RGB entry ``i`` with audio entry ``i // 5``,
  achieves on consistent lists). VGGish usually has one snippet fewer than I3D: then the
  last RGB snippet is dropped (``T_a = T - 1``, the reference rule); an audio file one
  snippet *longer* loses its last snippet; lengths that differ by more than one are an
  error naming both files, never a silent slice. A video without its audio file is an
  error.
- **Splits and list order.** Without list files, the split comes from a folder name on
  the path below the root that starts or ends with ``train`` or ``test`` (``train/``,
  ``RGBTest/``, ``vggish-test/``; any case), else from the annotation file (an annotated
  video is a test video); a video with neither is an error. With list files
  (``rgb.list``, ``rgb_test.list``, ``audio.list``, ``audio_test.list``: one ``.npy``
  path per line; the five crops of a video on consecutive lines; audio lists with each
  file once or repeated five times), they alone decide which videos are imported, their
  split (a list whose file name contains ``test`` is the test split) and their order in
  the table. A listed path is used where it exists, else the file of that name below the
  root (lists carry the paths of the machine that made them); a listed file found
  nowhere, or two files of that name, is an error naming the list and the line. Row order
  only matters to readers of the part files: AP pools all videos.
- **Ground truth.** Test rows get the annotation file's intervals (frame indices, end
  exclusive), ``gt_available`` for annotated and for normal test videos (the reference
  make_gt gives normal videos all-zero frames); frame-level AP then covers ``16 * T``
  frames per video (the VadCLIP variant of the ground-truth length).
- **Timing.** XD-Violence is taken as 24 fps (the annotations are frame indices; the rate
  is not in the release): a snippet is 16 frames, ``duration_s = 16 * T / 24``.

The :class:`~avarnet.features.spec.FeatureSpec` of such a table names the external
backbones (``external:i3d-rgb``, ``external:vggish``), 1024 + 128 dims and 16-frame
snippets; the preprocessing fields record the published extractors' input (I3D: 224 px
crops scaled to [-1, 1]; VGGish: 16 kHz), for reference only. This project has no encoders
for them: :func:`encoder_problem` says so, and Serve refuses such a model with that
message. Imported tables score through the Predictor (``avarnet evaluate``), not from video.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avarnet.data.manifest import (
    XD_LABEL_CODES,
    XD_NORMAL_CODE,
    ManifestError,
    assign_splits,
    parse_xd_name,
    read_xd_annotations,
    segment_ground_truth,
    walk_files,
)
from avarnet.features.spec import FeatureSpec
from avarnet.features.table import save_spec, write_part

__all__ = [
    "CROP_MODES",
    "EXTERNAL_PREFIX",
    "FORMATS",
    "IMPORT_FILE",
    "FeatureImportError",
    "XdVideo",
    "encoder_problem",
    "find_xd_features",
    "import_xd_features",
    "imported_spec",
    "load_xd_video",
    "pair_audio",
]

FORMATS = ("xd-i3d-vggish",)
CROP_MODES = ("mean", "each")
N_CROPS = 5
RGB_DIM, AUDIO_DIM = 1024, 128
SNIPPET_FRAMES = 16
XD_FPS = 24.0
EXTERNAL_PREFIX = "external:"
IMPORT_FILE = "import.json"

_FILE_RE = re.compile(r"^(?P<name>.+)__(?P<kind>[0-4]|vggish)\.npy$")
_NORMAL = XD_LABEL_CODES[XD_NORMAL_CODE]


class FeatureImportError(ManifestError):
    """Released features that cannot be imported (one line naming the file)."""


def imported_spec(format: str = "xd-i3d-vggish") -> FeatureSpec:
    """The FeatureSpec of a table imported from ``format`` (see the module docstring)."""
    if format not in FORMATS:
        raise FeatureImportError(f"unknown format {format!r}; expected one of {FORMATS}")
    return FeatureSpec(
        preset=format,
        audio_backbone=f"{EXTERNAL_PREFIX}vggish",
        audio_revision=None,
        visual_backbone=f"{EXTERNAL_PREFIX}i3d-rgb",
        visual_weights="external",
        visual_revision=None,
        sample_rate=16000,
        audio_normalize=False,
        image_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bilinear",
        frames_per_segment=SNIPPET_FRAMES,
        segment_seconds=SNIPPET_FRAMES / XD_FPS,
        segment_frames=SNIPPET_FRAMES,
        audio_dim=AUDIO_DIM,
        visual_dim=RGB_DIM,
    )


def encoder_problem(spec: FeatureSpec | dict) -> str | None:
    """Why no encoders can be built for ``spec`` (``None`` when they can): features from
    external backbones were imported, not extracted here."""
    d = spec.to_dict() if isinstance(spec, FeatureSpec) else dict(spec)
    audio, visual = str(d.get("audio_backbone", "")), str(d.get("visual_backbone", ""))
    if not (audio.startswith(EXTERNAL_PREFIX) or visual.startswith(EXTERNAL_PREFIX)):
        return None
    return (
        f"its features come from external backbones ({visual.removeprefix(EXTERNAL_PREFIX)} "
        f"visual, {audio.removeprefix(EXTERNAL_PREFIX)} audio), imported with `avarnet "
        "import-features`; this project has no encoders for them, so it cannot score video "
        "files. Score its feature tables instead (`avarnet evaluate --features TABLE`)"
    )


# --------------------------------------------------------------------------- finding
@dataclass
class XdVideo:
    """One video's released files: ``rgb`` the five crops in order 0..4, ``audio`` the
    VGGish file, ``split`` ``train`` or ``test``."""

    name: str
    split: str
    rgb: list[Path]
    audio: Path
    labels: list[str] = field(default_factory=list)


def _split_of(parts: Sequence[str]) -> str | None:
    """train/test from folder names (nearest first) that start or end with it."""
    for part in reversed(parts):
        low = part.lower()
        for split in ("test", "train"):
            if low.startswith(split) or low.endswith(split):
                return split
    return None


def _walk_npy(root: Path) -> list[Path]:
    return [root / rel for rel in walk_files(root, lambda name: name.endswith(".npy"))]


def _parse(path: Path) -> tuple[str, str] | None:
    m = _FILE_RE.match(path.name)
    return (m["name"], m["kind"]) if m else None


def _labels(name: str, where: Path | str) -> list[str]:
    try:
        return parse_xd_name(name)
    except ValueError as err:
        raise FeatureImportError(f"{where}: {err}") from None


def _read_list(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise FeatureImportError(f"{path}: no such list file")
    return [
        (i, line.strip())
        for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1)
        if line.strip()
    ]


def find_xd_features(
    root: str | os.PathLike,
    *,
    lists: Sequence[str | os.PathLike] | None = None,
    annotated: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[XdVideo], dict[str, int]]:
    """The videos of a released-feature folder, in table order (module docstring).

    Args:
        root: the folder holding the ``.npy`` files (any depth).
        lists: official list files; they alone decide the videos, splits and order.
        annotated: names in the annotation file (the split of videos no folder names).

    Returns:
        ``(videos, counts)``; ``counts`` holds ``ignored_npy`` (``.npy`` files of another
        kind) and ``audio_without_rgb``.

    Raises:
        FeatureImportError: no features found, a crop or an audio file missing, a name
            without labels or with an unknown code, a video without a split, a listed
            file found nowhere.
    """
    root = Path(os.path.abspath(os.fspath(root)))
    if not root.is_dir():
        raise FeatureImportError(f"{root}: no such directory")
    files = _walk_npy(root)
    rgb, audio, by_base, ignored = _index_files(root, files, unique=not lists)
    if not rgb and not lists:
        raise FeatureImportError(
            f"{root}: no released features found (expected <name>__0.npy ... <name>__4.npy "
            f"I3D crops and <name>__vggish.npy; {len(files)} .npy file(s) of another kind)"
        )
    if lists:
        videos, audio = _from_lists(root, [Path(p) for p in lists], by_base)
    else:
        videos = _from_folders(root, rgb, annotated)
    out = [_checked_video(root, v, audio, check_audio_split=not lists) for v in videos]
    names = {v.name for v in out}
    counts = {"ignored_npy": ignored, "audio_without_rgb": len(set(audio) - names)}
    return out, counts


def _index_files(
    root: Path, files: list[Path], *, unique: bool
) -> tuple[dict[str, dict[int, Path]], dict[str, Path], dict[str, list[Path]], int]:
    """``(rgb crops by name, audio by name, files by base name, files of another kind)``.

    ``unique``: a second file for one crop or one audio fails (without lists; with
    lists, only a listed name must be unique).
    """
    rgb: dict[str, dict[int, Path]] = {}
    audio: dict[str, Path] = {}
    by_base: dict[str, list[Path]] = {}
    ignored = 0
    for f in files:
        by_base.setdefault(f.name, []).append(f)
        parsed = _parse(f)
        if parsed is None:
            ignored += 1
            continue
        name, kind = parsed
        slot = audio if kind == "vggish" else rgb.setdefault(name, {})
        key = name if kind == "vggish" else int(kind)
        if key in slot and unique:
            raise FeatureImportError(
                f"{f}: two files for {f.name} below {root} (also {slot[key]}); point at one "
                "feature set (RGB and flow features share names)"
            )
        slot[key] = f
    return rgb, audio, by_base, ignored


def _from_folders(
    root: Path, rgb: dict[str, dict[int, Path]], annotated: set[str] | frozenset[str]
) -> list[tuple[str, str, dict[int, Path]]]:
    """Videos ``(name, split, {crop: path})`` split by their folders, in the field's order."""
    videos = []
    for name, crops in rgb.items():
        where = crops[min(crops)]
        split = _split_of(where.relative_to(root).parts[:-1])
        if split is None and name in annotated:
            split = "test"
        if split is None:
            raise FeatureImportError(
                f"{where}: no split: put the files below train/ and test/ folders, give "
                "the annotation file, or give the official lists with --lists"
            )
        videos.append((name, split, crops))
    # The field's order: train then test; violent videos before normal ones.
    videos.sort(key=lambda v: (v[1] != "train", "_label_A" in v[0], v[0]))
    return videos


def _checked_video(
    root: Path,
    video: tuple[str, str, dict[int, Path]],
    audio: dict[str, Path],
    *,
    check_audio_split: bool,
) -> XdVideo:
    """The :class:`XdVideo` of ``(name, split, crops)``: all five crops, its audio, labels."""
    name, split, crops = video
    missing = [k for k in range(N_CROPS) if k not in crops]
    where = crops[min(crops)] if crops else root / name
    if missing:
        raise FeatureImportError(
            f"{where}: crop(s) {', '.join(map(str, missing))} of {name} missing (expected "
            f"{name}__0.npy ... {name}__4.npy)"
        )
    if name not in audio:
        raise FeatureImportError(
            f"{where}: no audio features for {name} ({name}__vggish.npy) below {root}"
        )
    a_split = _split_of(audio[name].relative_to(root).parts[:-1]) if check_audio_split else None
    if a_split is not None and a_split != split:
        raise FeatureImportError(
            f"{audio[name]}: audio in the {a_split} split, its RGB crops in {split}"
        )
    out = XdVideo(name, split, [crops[k] for k in range(N_CROPS)], audio[name])
    out.labels = _labels(name, where)
    return out


def _from_lists(
    root: Path, lists: list[Path], by_base: dict[str, list[Path]]
) -> tuple[list[tuple[str, str, dict[int, Path]]], dict[str, Path]]:
    """Videos ``(name, split, {crop: path})`` in list order, and audio paths by name."""
    videos: dict[str, tuple[str, dict[int, Path]]] = {}
    audio: dict[str, Path] = {}
    for lst in lists:
        split = "test" if "test" in lst.name.lower() else "train"
        for lineno, text in _read_list(lst):
            where = f"{lst}:{lineno}"
            listed = Path(text)
            parsed = _parse(listed)
            if parsed is None:
                raise FeatureImportError(
                    f"{where}: {text}: not a released feature file (<name>__<0-4>.npy or "
                    "<name>__vggish.npy)"
                )
            path = _resolve(listed, lst, by_base, root, where)
            name, kind = parsed
            _labels(name, where)
            if kind == "vggish":
                if name in audio and audio[name] != path:
                    raise FeatureImportError(f"{where}: {name}: a second audio file ({path})")
                audio[name] = path
                continue
            seen_split, crops = videos.setdefault(name, (split, {}))
            if seen_split != split:
                raise FeatureImportError(f"{where}: {name} is listed in the train and test lists")
            crops[int(kind)] = path
    if not videos:
        raise FeatureImportError(
            f"{', '.join(map(str, lists))}: no RGB entries (<name>__<0-4>.npy) in the lists"
        )
    for name in videos:  # videos the audio lists do not name: their file below the root
        if name not in audio:
            found = by_base.get(f"{name}__vggish.npy", [])
            if len(found) == 1:
                audio[name] = found[0]
    return [(n, s, c) for n, (s, c) in videos.items()], audio


def _resolve(
    listed: Path, lst: Path, by_base: dict[str, list[Path]], root: Path, where: str
) -> Path:
    if listed.is_absolute() and listed.is_file():
        return listed
    if not listed.is_absolute() and (lst.parent / listed).is_file():
        return (lst.parent / listed).resolve()
    found = by_base.get(listed.name, [])
    if len(found) == 1:
        return found[0]
    if found:
        raise FeatureImportError(
            f"{where}: {listed}: {len(found)} files of that name below {root} "
            f"({found[0]}, {found[1]}); point at one feature set"
        )
    raise FeatureImportError(
        f"{where}: {listed}: no such file (not at that path, and no file of that name below {root})"
    )


# --------------------------------------------------------------------------- loading
def _load(path: Path, dim: int, what: str) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FeatureImportError(f"{path}: not a readable .npy file ({err})") from None
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] < 1:
        raise FeatureImportError(f"{path}: expected (T, {dim}) {what} features, got {x.shape}")
    return np.asarray(x, dtype=np.float32)


def pair_audio(
    rgb: np.ndarray, audio: np.ndarray, *, rgb_file: str = "RGB", audio_file: str = "audio"
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pair ``rgb (..., T, 1024)`` with ``audio (T_a, 128)`` on one snippet grid.

    ``T_a == T``: as they are; ``T_a == T - 1``: the last RGB snippet is dropped (the
    reference rule); ``T_a == T + 1``: the last audio snippet is dropped. Returns
    ``(rgb, audio, dropped)`` with ``dropped`` = +1 (an RGB snippet), -1 (an audio one) or 0.

    Raises:
        FeatureImportError: the lengths differ by more than one (naming both files).
    """
    t, ta = rgb.shape[-2], audio.shape[0]
    if ta == t:
        return rgb, audio, 0
    if ta == t - 1:
        return rgb[..., :-1, :], audio, 1
    if ta == t + 1:
        return rgb, audio[:-1], -1
    raise FeatureImportError(
        f"{audio_file}: {ta} audio snippets for {t} RGB snippets in {rgb_file}: they differ "
        "by more than one (the released audio is at most one snippet shorter)"
    )


def load_xd_video(video: XdVideo) -> tuple[np.ndarray, np.ndarray, int]:
    """``(rgb (5, T, 1024), audio (T, 128), dropped)``: the five crops and the audio,
    paired by :func:`pair_audio`.

    Raises:
        FeatureImportError: a file of the wrong shape, crops of different lengths, audio
            lengths off by more than one.
    """
    crops = [_load(p, RGB_DIM, "I3D RGB") for p in video.rgb]
    lengths = {len(c) for c in crops}
    if len(lengths) > 1:
        sizes = ", ".join(f"{p.name}: {len(c)}" for p, c in zip(video.rgb, crops))
        raise FeatureImportError(f"{video.rgb[0]}: the five crops differ in length ({sizes})")
    audio = _load(video.audio, AUDIO_DIM, "VGGish")
    return pair_audio(
        np.stack(crops), audio, rgb_file=str(video.rgb[0]), audio_file=str(video.audio)
    )


# --------------------------------------------------------------------------- importing
def _row(
    video_id: str,
    path: Path,
    video: XdVideo,
    split: str,
    visual: np.ndarray,
    audio: np.ndarray,
    gt: list[list[int]] | None,
) -> dict:
    t = len(visual)
    intervals = list(gt or [])
    return {
        "video_id": video_id,
        "path": str(path),
        "label": video.labels[0],
        "labels": list(video.labels),
        "split": split,
        "gt_intervals": intervals,
        "gt_available": gt is not None,
        "audio": audio,
        "visual": visual,
        "segment_gt": segment_ground_truth(intervals, np.arange(t + 1) * SNIPPET_FRAMES),
        "duration_s": t * SNIPPET_FRAMES / XD_FPS,
        "has_audio": True,
        "decoder": "",
    }


def import_xd_features(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    annotations: str | os.PathLike | None = None,
    lists: Sequence[str | os.PathLike] | None = None,
    crops: str = "mean",
    val_fraction: float = 0.0,
    seed: int = 0,
    rows_per_part: int = 256,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Import released XD-Violence I3D + VGGish features as a feature table at ``out``.

    Args:
        root: the folder holding the ``.npy`` files.
        out: the table folder (written aside and renamed into place).
        annotations: the test annotation file (``name s1 e1 ...``).
        lists: official list files (module docstring).
        crops: ``mean`` or ``each`` (training rows per crop).
        val_fraction: fraction of the training videos moved to a validation split
            (stratified by first label, deterministic for ``seed``); 0 keeps the field's
            train/test split. Tune ranks its trials on a validation split.
        rows_per_part: rows per Parquet part.
        force: replace an existing table at ``out``.

    Returns:
        A summary: ``out``, ``videos``, ``rows``, ``crops``, ``split_counts`` (rows),
        ``violent_normal`` (videos per split), ``snippets``, ``dropped_last_rgb`` /
        ``dropped_last_audio`` (videos paired by dropping one snippet), ``annotated``,
        ``problems`` (annotation lines naming no imported video), ``ignored_npy``,
        ``audio_without_rgb``.
    """
    out = _checked_out(out, crops, val_fraction, force)
    gt_table, problems, videos, counts = _find_annotated(root, annotations, lists)
    split_of = _split_videos(videos, val_fraction, seed)
    spec = imported_spec("xd-i3d-vggish")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    summary = _new_summary(root, out, annotations, lists, crops, val_fraction, videos, counts)
    try:
        buffer: list[dict] = []
        for i, video in enumerate(videos):
            buffer += _video_rows(video, split_of[video.name], gt_table, crops, summary)
            if len(buffer) >= rows_per_part or i == len(videos) - 1:
                _write_rows(buffer, tmp, spec, summary)
                buffer = []
            if progress is not None:
                progress(i + 1, len(videos))
        summary["problems"] = problems
        save_spec(spec, tmp)
        (tmp / IMPORT_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _checked_out(out: str | os.PathLike, crops: str, val_fraction: float, force: bool) -> Path:
    """The absolute table folder, once the arguments are known to be valid."""
    if crops not in CROP_MODES:
        raise FeatureImportError(f"unknown crop mode {crops!r}; expected one of {CROP_MODES}")
    if not 0.0 <= val_fraction < 1.0:
        raise FeatureImportError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = Path(os.path.abspath(os.fspath(out)))
    if out.exists() and any(out.iterdir()) and not force:
        raise FeatureImportError(f"{out}: already exists and is not empty (force replaces it)")
    return out


def _new_summary(
    root: str | os.PathLike,
    out: Path,
    annotations: str | os.PathLike | None,
    lists: Sequence[str | os.PathLike] | None,
    crops: str,
    val_fraction: float,
    videos: list[XdVideo],
    counts: dict[str, int],
) -> dict:
    """The import summary before any row is written (counts at zero)."""
    return {
        "format": "xd-i3d-vggish",
        "root": str(Path(root).resolve()),
        "out": str(out),
        "lists": [str(Path(p).resolve()) for p in lists or []],
        "annotations": str(Path(annotations).resolve()) if annotations else None,
        "crops": crops,
        "val_fraction": val_fraction,
        "videos": len(videos),
        "rows": 0,
        "split_counts": {},
        "violent_normal": {},
        "snippets": 0,
        "dropped_last_rgb": 0,
        "dropped_last_audio": 0,
        "annotated": 0,
        **counts,
    }


def _find_annotated(
    root: str | os.PathLike,
    annotations: str | os.PathLike | None,
    lists: Sequence[str | os.PathLike] | None,
) -> tuple[dict[str, list[list[int]]], list[dict], list[XdVideo], dict[str, int]]:
    """``(gt_table, problems, videos, counts)``: the annotation file read, the videos found
    (:func:`find_xd_features`), and the annotation lines naming no video as problems."""
    gt_table: dict[str, list[list[int]]] = {}
    problems: list[dict] = []
    if annotations is not None:
        gt_table, problems = read_xd_annotations(annotations)
    videos, counts = find_xd_features(root, lists=lists, annotated=set(gt_table))
    names = {v.name for v in videos}
    problems += [
        {"file": os.path.abspath(annotations), "reason": f"{name}: no such video"}
        for name in gt_table
        if name not in names
    ]
    return gt_table, problems, videos, counts


def _split_videos(videos: list[XdVideo], val_fraction: float, seed: int) -> dict[str, str]:
    """Each video's split: its own, with ``val_fraction`` of the training videos moved to
    ``val`` (stratified by first label, deterministic for ``seed``)."""
    split_of = {v.name: v.split for v in videos}
    if val_fraction > 0:
        train = [
            {"video_id": v.name, "label": v.labels[0], "split": None}
            for v in videos
            if v.split == "train"
        ]
        assign_splits(train, seed, (1.0 - val_fraction, val_fraction, 0.0))
        split_of.update({r["video_id"]: r["split"] for r in train})
    return split_of


def _video_rows(
    video: XdVideo,
    split: str,
    gt_table: dict[str, list[list[int]]],
    crops: str,
    summary: dict,
) -> list[dict]:
    """The table rows of one video (one, or one per crop); counts it into ``summary``."""
    rgb, audio, dropped = load_xd_video(video)
    summary["dropped_last_rgb"] += dropped == 1
    summary["dropped_last_audio"] += dropped == -1
    summary["snippets"] += rgb.shape[1]
    gt = None
    if split == "test" and video.name in gt_table:
        gt = gt_table[video.name]
    elif split == "test" and video.labels == [_NORMAL]:
        gt = []  # normal test videos: annotated as "nothing anomalous"
    summary["annotated"] += gt is not None
    vn = summary["violent_normal"].setdefault(split, {"violent": 0, "normal": 0})
    vn["normal" if video.labels == [_NORMAL] else "violent"] += 1
    if crops == "each" and split == "train":
        return [
            _row(f"{video.name}__{k}", video.rgb[k], video, split, rgb[k], audio, gt)
            for k in range(N_CROPS)
        ]
    return [_row(video.name, video.rgb[0], video, split, rgb.mean(0), audio, gt)]


def _write_rows(rows: list[dict], tmp: Path, spec: FeatureSpec, summary: dict) -> None:
    """Write ``rows`` as one Parquet part below ``tmp``; counts them into ``summary``."""
    for row in rows:
        sc = summary["split_counts"]
        sc[row["split"]] = sc.get(row["split"], 0) + 1
    summary["rows"] += len(rows)
    write_part(rows, tmp, spec)
