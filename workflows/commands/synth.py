"""``avarnet synth``: generate the audio-visual benchmark (VAAR-style folders or the XD-Violence layout) as real video files."""

from __future__ import annotations

import argparse

from avarnet.config import SynthConfig
from glue.errors import CliError
from workflows.commands._common import SubParsers, emit, progress_callback

_SYNTH = SynthConfig()  # the defaults, from the config (one source per setting)


def add(sub: SubParsers) -> None:
    p = sub.add_parser(
        "synth",
        help="write the generated audio-visual benchmark (real MP4 files)",
        description=(
            "Write the built-in benchmark: real MP4 clips (H.264 video + AAC audio) for the ten "
            "VAAR class names, in DIR/<Class>/*.mp4, plus DIR/manifest.csv. Each visual "
            "signature is shared by two classes and each audio signature by two others, so "
            "only fusion identifies the class. Deterministic for a seed. It is a test bed, "
            "not a claim about real-world accuracy. --layout xd-violence writes the same kind "
            "of clips in the XD-Violence layout instead (DIR/train, DIR/test, names with "
            "label codes, DIR/annotations.txt for the test videos)."
        ),
    )
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument(
        "--layout",
        default="vaar",
        choices=["vaar", "xd-violence"],
        help=(
            "vaar (default): DIR/<Class>/*.mp4 + manifest.csv; xd-violence: DIR/train and "
            "DIR/test with XD-Violence names (label codes, '#', multi-label), video-level "
            "labels for training and DIR/annotations.txt (frame intervals) for test"
        ),
    )
    p.add_argument(
        "--clips-per-class",
        type=int,
        default=_SYNTH.clips_per_class,
        help=f"clips per class (default {_SYNTH.clips_per_class}); xd-violence: violent "
        "training videos per class",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"clip length in seconds (default {_SYNTH.seconds:g}; xd-violence: the mean "
        "length, default 12)",
    )
    p.add_argument(
        "--seed", type=int, default=_SYNTH.seed, help=f"random seed (default {_SYNTH.seed})"
    )
    p.add_argument(
        "--fps",
        type=int,
        default=None,
        help=f"video frame rate (default {_SYNTH.fps}; xd-violence 16)",
    )
    p.add_argument(
        "--degrade-fraction",
        type=float,
        default=None,
        help=f"fraction of clips darkened, occluded or noisy (default "
        f"{_SYNTH.degrade_fraction:g}; not xd-violence)",
    )
    p.add_argument(
        "--no-audio-fraction",
        type=float,
        default=_SYNTH.no_audio_fraction,
        help=f"fraction of clips written without an audio track (default "
        f"{_SYNTH.no_audio_fraction:g})",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from avarnet.data.manifest import read_manifest
    from avarnet.data.synthetic import generate_benchmark

    if args.layout == "xd-violence":
        return _run_synth_xd(args)
    seconds = _SYNTH.seconds if args.seconds is None else args.seconds
    if args.clips_per_class < 1 or seconds <= 0:
        raise CliError("--clips-per-class must be >= 1 and --seconds > 0")
    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    degrade = _SYNTH.degrade_fraction if args.degrade_fraction is None else args.degrade_fraction
    generate_benchmark(
        out,
        clips_per_class=args.clips_per_class,
        seconds=seconds,
        seed=args.seed,
        fps=_SYNTH.fps if args.fps is None else args.fps,
        degrade_fraction=degrade,
        no_audio_fraction=args.no_audio_fraction,
        progress=None if args.json else progress_callback("synth"),
    )
    summary = read_manifest(out / "manifest.csv").summary()
    result = {
        "out": str(out),
        "manifest": str(out / "manifest.csv"),
        "seconds": round(time.perf_counter() - t0, 2),
        **summary,
    }
    emit(
        args,
        result,
        lambda r: (
            f"wrote {r['clips']} clips in {r['seconds']} s\n"
            f"  clips:    {r['out']}\n  manifest: {r['manifest']}\n"
            f"  splits:   {r['split_counts']}"
        ),
    )
    return 0


def _run_synth_xd(args: argparse.Namespace) -> int:
    """``avarnet synth --layout xd-violence``: the generated benchmark in the XD-Violence
    layout (:mod:`avarnet.data.synthetic_xd`), read back with the XD-Violence reader."""
    import time
    from pathlib import Path

    from avarnet.data.manifest import read_manifest
    from avarnet.data.synthetic_xd import ANNOTATIONS_FILE, generate_xd_benchmark, xd_split_counts

    seconds = 12.0 if args.seconds is None else args.seconds
    if args.clips_per_class < 1 or seconds <= 0:
        raise CliError("--clips-per-class must be >= 1 and --seconds > 0")
    if args.degrade_fraction or args.no_audio_fraction:
        raise CliError(
            "--degrade-fraction and --no-audio-fraction are not available with "
            "--layout xd-violence (every video is clean and has audio)"
        )
    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    generate_xd_benchmark(
        out,
        clips_per_class=args.clips_per_class,
        seconds=seconds,
        seed=args.seed,
        fps=16 if args.fps is None else args.fps,
        progress=None if args.json else progress_callback("synth"),
    )
    manifest = read_manifest(out, format="xd-violence", annotations=out / ANNOTATIONS_FILE)
    result = {
        "out": str(out),
        "annotations": str(out / ANNOTATIONS_FILE),
        "seconds": round(time.perf_counter() - t0, 2),
        **manifest.summary(),
        "violent_normal": xd_split_counts(manifest.rows),
    }

    def human(r: dict) -> str:
        counts = ", ".join(
            f"{split} {c['violent']} violent + {c['normal']} normal"
            for split, c in r["violent_normal"].items()
        )
        return (
            f"wrote {r['clips']} videos (XD-Violence layout) in {r['seconds']} s\n"
            f"  videos:      {r['out']}/train, {r['out']}/test\n"
            f"  annotations: {r['annotations']} ({r['annotated_clips']} test videos with "
            f"frame labels)\n  splits:      {counts}"
        )

    emit(args, result, human)
    return 0
