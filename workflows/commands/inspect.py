"""``avarnet inspect``: what a video file holds, as the decoder reads it."""

from __future__ import annotations

import argparse

from workflows.commands._common import SubParsers, emit


def add(sub: SubParsers) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a clip's metadata and its segment grid",
        description="Probe one video file: duration, frame rate, frames, audio track, segments.",
    )
    p.add_argument("file", help="a video file")
    p.add_argument(
        "--segment-seconds", type=float, default=1.0, help="segment length (default 1.0)"
    )
    p.add_argument(
        "--segment-frames",
        type=int,
        default=None,
        help="segments of N frames instead of seconds (XD-Violence: 16)",
    )
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from avarnet.data.decode import DecodeOptions, probe

    opts = DecodeOptions(segment_seconds=args.segment_seconds, segment_frames=args.segment_frames)
    info = probe(args.file)
    result = {
        "path": info.path,
        "duration_s": round(info.duration_s, 4),
        "fps": round(info.fps, 4),
        "n_frames": info.n_frames,
        "width": info.width,
        "height": info.height,
        "has_audio": info.has_audio,
        "audio_sample_rate": info.audio_sample_rate,
        "audio_channels": info.audio_channels,
        "n_segments": info.n_segments(opts),
        "decoder": info.decoder,  # decord, or PyAV for what decord cannot read correctly
    }
    emit(args, result, lambda r: "\n".join(f"{k:18s} {v}" for k, v in r.items()))
    return 0
