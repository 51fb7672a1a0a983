"""The generated benchmark in the XD-Violence layout: real MP4 files (H.264 + AAC) named
and annotated as the released dataset is, so the XD-Violence path (names, splits,
annotations, 16-frame snippets, multiple-instance training, frame-level AP) runs end to
end on data whose answer is known.

Layout written under ``out_dir``::

    train/<name>.mp4      video-level labels only (in the name)
    test/<name>.mp4
    annotations.txt       one line per violent test video: ``name s1 e1 s2 e2 ...``
                          (frame indices, end exclusive; every 7th line carries a stray
                          ``.mp4`` on the name, as about 14 lines of the real file do);
                          normal videos have no line
    xd_synthetic.json     the parameters and, per video, its events and frame count

Names follow the release: ``Synth.<Title>.<year>__#<hh-mm-ss>_<hh-mm-ss>_label_<codes>``
(movie style) or ``v=<11 chars>__#<n>_label_<codes>`` (YouTube style), with the codes of
:data:`~avarnet.data.manifest.XD_LABEL_CODES`: up to three, ``0`` for an unused slot
(``_label_B1-0-0``, ``_label_B1-B2-0``), ``_label_A`` for a normal video.

Content, reusing the signatures and the writer of :mod:`avarnet.data.synthetic`: each
violent class shows a visual signature and plays an audio signature during its events
(:data:`XD_SIGNATURES`; every visual signature is shared by two classes and every audio
signature by two, so one modality alone does not name the class). A violent video has one
or two events covering 15-35 % of it each (a multi-label video: two events of different
classes), never the whole video; the rest is the neutral background, sometimes with a
"normal activity" (a signature pair no violent class has, whose audio is a violent class's
audio). A normal video is background, usually with one normal activity. Lengths vary
(0.6-1.4 x ``seconds``). There are no degradations and every video has audio.

Counts: ``clips_per_class`` violent training videos per class (by first label) and as many
normal ones as violent ones in all (XD-Violence: 1,905 / 2,049); ``ceil(clips_per_class
/ 2)`` violent test videos per class and 0.6 as many normal ones (XD-Violence: 500 / 300).
Deterministic for a seed: video ``j`` of split ``s`` draws from
``SeedSequence([seed, s, j])``.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from avarnet.data.manifest import XD_LABEL_CODES, XD_NORMAL_CODE
from avarnet.data.synthetic import (
    _RAMP_S,
    _audio_signature,
    _render_audio,
    _render_video,
    _VisualSignature,
    write_av_clip,
)

__all__ = [
    "ANNOTATIONS_FILE",
    "INFO_FILE",
    "NORMAL_ACTIVITIES",
    "VIOLENT_CODES",
    "XD_SIGNATURES",
    "generate_xd_benchmark",
    "xd_split_counts",
]

VIOLENT_CODES = ("B1", "B2", "B4", "B5", "B6", "G")
# code -> (visual signature, audio signature) of avarnet.data.synthetic; class i gets
# (i // 2, (i // 2 + i % 2) % 5), as the VAAR-style benchmark pairs them.
XD_SIGNATURES: dict[str, tuple[int, int]] = {
    code: (i // 2, (i // 2 + i % 2) % 5) for i, code in enumerate(VIOLENT_CODES)
}
# Not violent: visual signatures no violent class shows, audio that violent classes play.
NORMAL_ACTIVITIES: tuple[tuple[int, int], ...] = ((3, 3), (4, 0))
ANNOTATIONS_FILE = "annotations.txt"
INFO_FILE = "xd_synthetic.json"

_TITLES = ("Night.Watch", "Harbour.Lights", "Iron.Street", "Cold.River", "Glass.City", "Red.Dawn")
_YT_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SPLITS = ("train", "test")


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}-{seconds // 60 % 60:02d}-{seconds % 60:02d}"


def _name(rng: np.random.Generator, codes: list[str], seconds: float) -> str:
    """A release-style name; ``codes`` empty for a normal video."""
    label = XD_NORMAL_CODE if not codes else "-".join(codes + ["0"] * (3 - len(codes)))
    if rng.random() < 0.6:
        title = _TITLES[int(rng.integers(len(_TITLES)))]
        start = int(rng.integers(0, 2 * 3600))
        span = f"{_hms(start)}_{_hms(start + max(1, round(seconds)))}"
        head = f"Synth.{title}.{int(rng.integers(1990, 2025))}__#{span}"
    else:
        vid = "".join(_YT_CHARS[int(i)] for i in rng.integers(0, len(_YT_CHARS), 11))
        head = f"v={vid}__#{int(rng.integers(1, 10))}"
    return f"{head}_label_{label}"


def _place(rng: np.random.Generator, n: int, lengths: list[int]) -> list[tuple[int, int]]:
    """Non-overlapping ``[start, end)`` frame intervals of the given lengths, in the given
    order, with random gaps (at least one frame between two intervals)."""
    free = n - sum(lengths) - (len(lengths) - 1)
    gaps = np.floor(rng.dirichlet(np.ones(len(lengths) + 1)) * free).astype(int)
    out, pos = [], int(gaps[0])
    for length, gap in zip(lengths, gaps[1:]):
        out.append((pos, pos + length))
        pos += length + 1 + int(gap)
    return out


def _plan_video(
    rng: np.random.Generator, code: str | None, n: int, multi_label_fraction: float
) -> tuple[list[str], list[dict]]:
    """Label codes and intervals ``{"start", "end", "code", "visual", "audio"}`` of one
    video (``code`` None: a normal video); ``code`` is None on normal activities."""
    items: list[str | None] = []
    if code is not None:
        items.append(code)
        if rng.random() < multi_label_fraction:
            items.append(str(rng.choice([c for c in VIOLENT_CODES if c != code])))
        elif rng.random() < 0.25:
            items.append(code)  # the same violence twice
        if rng.random() < 0.5:
            items.append(None)
    elif rng.random() < 0.8:
        items.append(None)
    lengths = [
        max(16, round(rng.uniform(0.15, 0.35) * n))
        if c is not None
        else max(8, round(rng.uniform(0.2, 0.5 if code else 0.7) * n))
        for c in items
    ]
    while sum(lengths) + len(lengths) > n:  # a short video: shrink the longest interval
        i = int(np.argmax(lengths))
        lengths[i] = max(1, lengths[i] - 8)
    order = rng.permutation(len(items))
    placed = _place(rng, n, [lengths[i] for i in order])
    intervals = []
    for k, (s, e) in zip(order, placed):
        c = items[k]
        vis, aud = (
            XD_SIGNATURES[c]
            if c is not None
            else NORMAL_ACTIVITIES[int(rng.integers(len(NORMAL_ACTIVITIES)))]
        )
        intervals.append({"start": s, "end": e, "code": c, "visual": vis, "audio": aud})
    # The name lists the video's own class first (its primary label), then the other one.
    codes = list(dict.fromkeys(c for c in items if c is not None))
    return codes, intervals


def _render(
    rng: np.random.Generator,
    n: int,
    fps: float,
    size: tuple[int, int],
    audio_rate: int,
    intervals: list[dict],
) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(n, H, W, 3)`` uint8 and audio ``(1, S)``: the background of
    :mod:`avarnet.data.synthetic` with each interval's signatures laid over it."""
    w, h = size
    video_rng, audio_rng, sig_rng, none_rng = (
        np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(4)
    )
    video = _render_video(0, video_rng, none_rng, n, fps, w, h, (0, 0), None)
    n_samples = round(n / fps * audio_rate)
    audio = _render_audio(0, audio_rng, none_rng, n_samples, audio_rate, 1, (0.0, 0.0), False)
    t = np.arange(n_samples) / audio_rate
    for iv in intervals:
        sig = _VisualSignature(iv["visual"], sig_rng, w, h)
        for i in range(iv["start"], iv["end"]):
            a = sig.alpha((i - iv["start"]) / fps)
            a = a[..., None] if isinstance(a, np.ndarray) else a
            frame = video[i].astype(np.float32) * (1 - a) + sig.colour * a
            frame = frame + sig_rng.normal(0, 3, (h, w, 1))
            video[i] = np.clip(frame + 0.5, 0, 255)
        s_s, e_s = iv["start"] / fps, iv["end"] / fps
        te = t - s_s
        env = np.clip(np.minimum(te, e_s - t) / _RAMP_S, 0, 1)
        wave = _audio_signature(iv["audio"], sig_rng, t, te, audio_rate) * env
        inside = env > 0
        if inside.any():
            rms = float(np.sqrt(np.mean(wave[inside] ** 2)))
            audio[0] += (wave * (sig_rng.uniform(0.1, 0.16) / max(rms, 1e-12))).astype(np.float32)
    return video, np.clip(audio, -1, 1)


def xd_split_counts(rows: list[dict]) -> dict[str, dict[str, int]]:
    """``{split: {"violent": n, "normal": m}}`` of manifest rows (normal: labels ==
    ``["normal"]``)."""
    normal = XD_LABEL_CODES[XD_NORMAL_CODE]
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        c = out.setdefault(row["split"] or "", {"violent": 0, "normal": 0})
        c["normal" if list(row["labels"]) == [normal] else "violent"] += 1
    return dict(sorted(out.items()))


def _plan_splits(clips_per_class: int) -> dict[str, list]:
    """Per split, the violent code of each video (None: a normal video): as many normal
    as violent training videos, half as many test videos with 60 % normal ones."""
    n_test = math.ceil(clips_per_class / 2)
    return {
        "train": [c for c in VIOLENT_CODES for _ in range(clips_per_class)]
        + [None] * (len(VIOLENT_CODES) * clips_per_class),
        "test": [c for c in VIOLENT_CODES for _ in range(n_test)]
        + [None] * round(0.6 * len(VIOLENT_CODES) * n_test),
    }


def _write_info(out: Path, params: dict, info: dict) -> None:
    meta = {
        "generator": "avarnet.data.synthetic_xd",
        "params": params,
        "signatures": dict(XD_SIGNATURES),
        "normal_activities": [list(a) for a in NORMAL_ACTIVITIES],
        "videos": info,
    }
    _write_atomic(out / INFO_FILE, json.dumps(meta, indent=1) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_video(
    rng,
    out: Path,
    split: str,
    code,
    names: set,
    annotations: list,
    *,
    seconds,
    fps,
    size,
    audio_rate,
    multi_label_fraction,
) -> tuple[dict, dict]:
    """Render and write one video of ``split`` (``code`` None: a normal one); its manifest
    row and its entry in the benchmark's info file. A test video with events adds its
    annotation line to ``annotations`` (every seventh name with a stray ``.mp4``, as in
    the published file)."""
    n = max(48, round(rng.uniform(0.6, 1.4) * seconds * fps))
    codes, intervals = _plan_video(rng, code, n, multi_label_fraction)
    name = _name(rng, codes, n / fps)
    while name in names:  # two draws alike: draw again (deterministic)
        name = _name(rng, codes, n / fps)
    names.add(name)
    video, audio = _render(rng, n, fps, size, audio_rate, intervals)
    path = out / split / f"{name}.mp4"
    tmp = path.with_name(f".{uuid.uuid4().hex[:8]}.tmp.mp4")
    write_av_clip(tmp, video, fps, audio, audio_rate)
    os.replace(tmp, path)
    events = sorted([iv["start"], iv["end"]] for iv in intervals if iv["code"] is not None)
    labels = [XD_LABEL_CODES[c] for c in codes] or [XD_LABEL_CODES[XD_NORMAL_CODE]]
    test = split == "test"
    if test and events:
        shown = name + (".mp4" if len(annotations) % 7 == 3 else "")
        annotations.append(" ".join([shown] + [str(v) for ev in events for v in ev]))
    row = {
        "video_id": f"{split}/{name}",
        "path": str(path),
        "label": labels[0],
        "labels": labels,
        "split": split,
        "gt_intervals": events if test else [],
        "gt_available": test,
    }
    entry = {"codes": codes or [XD_NORMAL_CODE], "n_frames": n, "intervals": intervals}
    return row, entry


def generate_xd_benchmark(
    out_dir: str | os.PathLike,
    *,
    clips_per_class: int = 12,
    seconds: float = 12.0,
    seed: int = 0,
    fps: float = 16,
    size: tuple[int, int] = (96, 64),
    audio_rate: int = 16000,
    multi_label_fraction: float = 0.2,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Write the XD-Violence-layout benchmark (module docstring) to ``out_dir``.

    Args:
        clips_per_class: violent training videos per violent class (six classes).
        seconds: mean video length; each video is 0.6-1.4 times as long.
        fps: frame rate; 16 makes a 16-frame snippet one second.
        size: ``(width, height)``, both even.
        multi_label_fraction: fraction of violent videos with a second, different class.
        progress: called as ``progress(done, total)`` after each video.

    Returns:
        The manifest rows, as ``read_manifest(out_dir, format="xd-violence",
        annotations=out_dir / "annotations.txt")`` reads them back (train rows without
        frame labels, test rows with their intervals; normal test videos annotated as
        "nothing anomalous").
    """
    if clips_per_class < 1 or not seconds > 0 or not fps > 0:
        raise ValueError("clips_per_class must be >= 1, seconds and fps > 0")
    if not 0 <= multi_label_fraction <= 1:
        raise ValueError(f"multi_label_fraction must be in [0, 1], got {multi_label_fraction}")
    out = Path(os.path.abspath(os.fspath(out_dir)))
    plan = _plan_splits(clips_per_class)
    total = sum(len(v) for v in plan.values())
    rows: list[dict] = []
    info: dict[str, dict] = {}
    names: set[str] = set()
    annotations: list[str] = []
    done = 0
    for si, split in enumerate(_SPLITS):
        (out / split).mkdir(parents=True, exist_ok=True)
        for j, code in enumerate(plan[split]):
            rng = np.random.default_rng(np.random.SeedSequence([seed, si, j]))
            row, entry = _write_video(
                rng,
                out,
                split,
                code,
                names,
                annotations,
                seconds=seconds,
                fps=fps,
                size=size,
                audio_rate=audio_rate,
                multi_label_fraction=multi_label_fraction,
            )
            rows.append(row)
            info[row["video_id"]] = entry
            done += 1
            if progress is not None:
                progress(done, total)
    _write_atomic(out / ANNOTATIONS_FILE, "".join(line + "\n" for line in annotations))
    params = {"clips_per_class": clips_per_class, "seconds": seconds, "seed": seed}
    params.update(fps=fps, size=list(size), audio_rate=audio_rate)
    params["multi_label_fraction"] = multi_label_fraction
    _write_info(out, params, info)
    rows.sort(key=lambda r: r["path"])
    return rows
