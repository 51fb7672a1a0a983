"""Decode throughput on the generated benchmark.

Decodes every clip of a freshly generated benchmark onto the segment grid
(``avarnet.data.decode.iter_chunks``) and prints frames per second, against a baseline
measured in the same run: decord reading every frame of the same clips at the same size
(what ``ray.data.read_videos`` does). The ratio shows what sampling K frames per segment
saves. Also reports peak memory while decoding a long clip in chunks.

    .venv/bin/python benchmarks/decode.py [--clips-per-class 4] [--seconds 4] [--long-seconds 120]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avarnet.data.decode import DecodeOptions, iter_chunks, probe  # noqa: E402
from avarnet.data.synthetic import generate_benchmark, write_av_clip  # noqa: E402


def _all_frames(path: str, size: int) -> int:
    import decord

    vr = decord.VideoReader(path, width=size, height=size, num_threads=1)
    n = 0
    for start in range(0, len(vr), 64):
        n += len(vr.get_batch(list(range(start, min(len(vr), start + 64)))).asnumpy())
    del vr
    return n


def _vm(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _long_clip_peak_mb(tmp: Path, seconds: int, opts: DecodeOptions) -> tuple[float, float, int]:
    """Peak RSS growth (MB) decoding a long clip in chunks, and one chunk's frame bytes."""
    path = tmp / "long.mp4"
    fps, h, w = 12, 240, 320
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (fps * seconds, h, w, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal((1, 16000 * seconds))).astype(np.float32)
    write_av_clip(path, video, fps, audio, 16000)
    del video, audio
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now (Linux)
    base = _vm("VmRSS")
    chunk_bytes = 0
    n = 0
    for chunk in iter_chunks(path, opts):
        chunk_bytes = max(chunk_bytes, chunk.frames.nbytes)
        n += chunk.n_segments
    peak = _vm("VmHWM")
    whole_clip_mb = n * opts.frames_per_segment * opts.image_size**2 * 3 / 2**20
    return peak - base, whole_clip_mb, chunk_bytes


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clips-per-class", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--frames-per-segment", type=int, default=8)
    ap.add_argument("--long-seconds", type=int, default=120)
    args = ap.parse_args()
    opts = DecodeOptions(image_size=args.image_size, frames_per_segment=args.frames_per_segment)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = generate_benchmark(
            tmp / "bench", clips_per_class=args.clips_per_class, seconds=args.seconds, seed=0
        )
        paths = [r["path"] for r in rows]
        video_frames = sum(probe(p).n_frames for p in paths)
        t0 = time.perf_counter()
        sampled = 0
        for p in paths:
            for chunk in iter_chunks(p, opts):
                sampled += chunk.frames.shape[0] * chunk.frames.shape[1]
        grid_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        read = sum(_all_frames(p, args.image_size) for p in paths)
        all_s = time.perf_counter() - t0
        print(
            f"clips: {len(paths)} x {args.seconds:.0f} s, {video_frames} video frames, size {args.image_size}"
        )
        print(
            f"segment-grid decode (frames+audio): {sampled} frames sampled in {grid_s:.2f} s = "
            f"{sampled / grid_s:.0f} sampled frames/s, {video_frames / grid_s:.0f} video frames/s covered"
        )
        print(
            f"baseline, decord every frame:       {read} frames in {all_s:.2f} s = {read / all_s:.0f} frames/s"
        )
        print(f"ratio (clip throughput, grid / every-frame): {all_s / grid_s:.2f}x")
        grow, whole, chunk_bytes = _long_clip_peak_mb(tmp, args.long_seconds, opts)
        print(
            f"long clip ({args.long_seconds} s, 320x240): peak RSS growth {grow:.0f} MB; "
            f"one chunk's frames {chunk_bytes / 2**20:.0f} MB; the whole clip's sampled frames "
            f"would be {whole:.0f} MB"
        )


if __name__ == "__main__":
    main()
