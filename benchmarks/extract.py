"""Feature-extraction throughput: the Ray Data pipeline against a plain loop and the
encoders alone, on the same generated clips and the same backbones, in one run.

For each preset (``tiny``; ``full-random`` = mobilevit_s at 256 px and the wav2vec2-base
configuration, randomly initialised because no model hub is reachable here):

  (a) plain loop   decode then encode, clip by clip, in this process (torch on all cores);
  (b) Ray Data     ``workflows.extract.run_extract``: decode tasks -> encoder actor pool ->
                   Parquet, timed end to end (actor start-up and writing included);
  (c) encoders     the encoders alone on chunks decoded beforehand: the compute bound.

It prints clip-seconds per wall second for each and the ratios b/a and b/c, end to end
and marginal: (a) and (b) run on a small and a large set of clips, and the difference
cancels fixed costs (Ray's actor start-up, building the backbones), which is what a
real dataset of thousands of clips sees. Then a long
clip (``--long-minutes``): peak memory of decoding it on the paper's grid (256 px, 8 frames
per 1 s segment) chunk by chunk, against the size of the whole clip's sampled frames, and
the Ray Data pipeline extracting it (tiny preset) to the end.

    .venv/bin/python benchmarks/extract.py [--presets tiny,full-random]
        [--clips tiny=40:200,full-random=4:12] [--workers 1] [--long-minutes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from avarnet.data.decode import iter_chunks  # noqa: E402
from avarnet.data.manifest import read_manifest  # noqa: E402
from avarnet.data.synthetic import generate_benchmark  # noqa: E402
from avarnet.features.backbones import build_encoders, build_feature_spec  # noqa: E402


def _loop(enc, rows: list[dict]) -> tuple[float, float]:
    """(a): (clip seconds, wall seconds) of the plain loop over ``rows``."""
    t0 = time.perf_counter()
    clip_seconds = sum(enc.encode_clip(r["path"]).info.duration_s for r in rows)
    return clip_seconds, time.perf_counter() - t0


def _ray(rows: list[dict], spec, out: Path, args) -> tuple[float, float]:
    """(b): (clip seconds, wall seconds) of the Ray Data job, everything included."""
    from workflows.extract import run_extract

    s = run_extract(
        rows,
        out,
        spec,
        workers=args.workers,
        batch_size=args.preset_batch,
        threads_per_worker=args.threads,
        encoder_cpus=1.0,
        decode_cpus=args.decode_cpus,
        clips_per_task=args.clips_per_task,
        progress=False,
    )
    if s.clips_failed:
        raise SystemExit(f"{s.clips_failed} clips failed: {s.errors[:2]}")
    return s.clip_seconds, s.wall_seconds


def _bench_preset(preset: str, rows: list[dict], n_small: int, tmp: Path, args) -> dict:
    """Throughputs at ``len(rows)`` clips, and marginal ones (the difference between
    ``len(rows)`` and ``n_small`` clips: fixed start-up costs cancel out)."""
    import torch

    spec = build_feature_spec(preset)
    torch.set_num_threads(os.cpu_count() or 1)
    enc = build_encoders(spec)
    enc.encode_clip(rows[0]["path"])  # warm-up (lazy init, allocator) for (a) and (c)
    a_small, a_big = _loop(enc, rows[:n_small]), _loop(enc, rows)

    # (c) the encoders alone on pre-decoded chunks, batched as the pipeline batches them
    opts = spec.decode_options()
    chunks = [c for r in rows for c in iter_chunks(r["path"], opts)]
    t0 = time.perf_counter()
    for i in range(0, len(chunks), args.preset_batch):
        enc.encode_chunks(chunks[i : i + args.preset_batch])
    c = a_big[0] / (time.perf_counter() - t0)
    del chunks, enc

    b_small = _ray(rows[:n_small], spec, tmp / f"{preset}-small", args)
    b_big = _ray(rows, spec, tmp / f"{preset}-big", args)

    def marginal(small, big):
        return (big[0] - small[0]) / (big[1] - small[1])

    return {
        "a": a_big[0] / a_big[1],
        "b": b_big[0] / b_big[1],
        "c": c,
        "a_marginal": marginal(a_small, a_big),
        "b_marginal": marginal(b_small, b_big),
        "b_fixed_s": b_big[1] - b_big[0] / marginal(b_small, b_big),
    }


def _vm(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _decode_peak(path: str) -> None:
    """Child process: decode ``path`` on the paper grid chunk by chunk; print peak RSS."""
    from workflows.extract import decode_row

    spec = build_feature_spec("paper")
    opts = spec.decode_options()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    base = _vm("VmRSS")
    n, chunk_mb = 0, 0.0

    for item in decode_row({"video_id": "long", "path": path}, opts=opts):
        if item["error"]:
            raise SystemExit(item["error"])
        n += item["frames"].shape[0]
        chunk_mb = max(chunk_mb, item["frames"].nbytes / 2**20)
    peak = _vm("VmHWM")
    whole = n * opts.frames_per_segment * opts.image_size**2 * 3 / 2**20
    print(
        json.dumps(
            {"segments": n, "growth_mb": peak - base, "chunk_mb": chunk_mb, "whole_mb": whole}
        )
    )


def _long_clip(tmp: Path, minutes: float, args) -> None:
    from avarnet.data.synthetic import write_av_clip
    from workflows.extract import run_extract

    seconds = int(minutes * 60)
    fps, h, w = 12, 120, 160
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((fps * seconds, h, w, 3), np.uint8)
    for i in range(len(frames)):  # a slowly moving gradient: cheap to encode, not static
        frames[i, ..., 0] = (xx + 2 * i) % 256
        frames[i, ..., 1] = (yy + i) % 256
        frames[i, ..., 2] = 128
    t = np.arange(16000 * seconds) / 16000
    audio = (0.2 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)
    path = tmp / "long.mp4"
    write_av_clip(path, frames, fps, audio, 16000)
    del frames, audio
    res = subprocess.run(
        [sys.executable, __file__, "--_decode-peak", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        f"\nlong clip ({minutes:g} min): decoding on the paper grid (256 px, 8 frames/segment), "
        f"{peak['segments']} segments: peak RSS growth {peak['growth_mb']:.0f} MB; one chunk's "
        f"frames {peak['chunk_mb']:.0f} MB; the whole clip's sampled frames would be "
        f"{peak['whole_mb']:.0f} MB"
    )
    spec = build_feature_spec("tiny")
    row = {"video_id": "long", "path": str(path), "label": "Normal", "labels": ["Normal"]}
    row.update(split="test", gt_intervals=[], gt_available=False)
    s = run_extract([row], tmp / "features-long", spec, workers=args.workers, progress=False)
    print(
        f"long clip through the Ray Data pipeline (tiny): ok={s.clips_ok} failed={s.clips_failed} "
        f"in {s.wall_seconds:.1f} s = {s.clip_seconds_per_s:.1f} clip-s/s"
    )


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--presets", default="tiny,full-random")
    ap.add_argument(
        "--clips",
        default="tiny=40:200,full-random=4:12",
        help="per preset, the small and the large number of clips (marginal = difference)",
    )
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    ap.add_argument("--workers", type=int, default=1, help="encoder actors in (b)")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads per actor in (b); 0 = all cores"
    )
    ap.add_argument("--decode-cpus", type=float, default=0.5, help="CPUs per decode task in (b)")
    ap.add_argument("--clips-per-task", type=int, default=4, help="clips per decode task in (b)")
    ap.add_argument(
        "--batch-size",
        default="tiny=4,full-random=1",
        help="chunks per encoder call, per preset (on a CPU, small backbones gain from "
        "batching, full-size ones lose)",
    )
    ap.add_argument("--long-minutes", type=float, default=10.0, help="0 skips the long clip")
    ap.add_argument("--_decode-peak", dest="decode_peak", help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> None:
    args = _args()
    if args.decode_peak:
        _decode_peak(args.decode_peak)
        return

    import ray

    from glue.runtime import init_kwargs, quiet_driver

    ray.init(**init_kwargs(num_cpus=os.cpu_count(), address=None))
    quiet_driver()
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            sizes = {
                k: tuple(int(n) for n in v.split(":"))
                for k, v in (item.split("=") for item in args.clips.split(","))
            }
            most = max(n for _, n in sizes.values())
            generate_benchmark(tmp / "bench", clips_per_class=-(-most // 10), seconds=args.seconds)
            rows = read_manifest(tmp / "bench" / "manifest.csv").rows
            rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
            print(
                f"clips of {args.seconds:g} s; {os.cpu_count()} CPUs; (b): {args.workers} "
                f"encoder actor(s), {args.threads or 'all'} torch threads, decode tasks of "
                f"{args.clips_per_task} clips at {args.decode_cpus} CPU, encoder batches "
                f"{args.batch_size} chunks"
            )
            print(
                f"{'preset':<12} {'clips':>6} {'(a) loop':>9} {'(b) Ray':>8} {'(c) enc':>8} "
                f"{'b/a':>5} {'b/c':>5} | marginal: {'(a)':>6} {'(b)':>6} {'b/a':>5} {'b/c':>5}"
                f" | (b) fixed s"
            )
            batch_sizes = {
                k: int(v) for k, v in (item.split("=") for item in args.batch_size.split(","))
            }
            for preset in args.presets.split(","):
                small, big = sizes[preset]
                args.preset_batch = batch_sizes.get(preset, 1)
                r = _bench_preset(preset, rows[:big], small, tmp, args)
                print(
                    f"{preset:<12} {big:>6} {r['a']:>9.2f} {r['b']:>8.2f} {r['c']:>8.2f} "
                    f"{r['b'] / r['a']:>5.2f} {r['b'] / r['c']:>5.2f} |           "
                    f"{r['a_marginal']:>6.2f} {r['b_marginal']:>6.2f} "
                    f"{r['b_marginal'] / r['a_marginal']:>5.2f} {r['b_marginal'] / r['c']:>5.2f}"
                    f" | {r['b_fixed_s']:>5.1f}",
                    flush=True,
                )
            print(
                "clip-seconds per wall second. Marginal: (clip seconds of the large run - of the "
                "small run) / (wall time difference), start-up costs cancelled; (b) fixed s: the "
                "large run's wall time minus its clip seconds at the marginal rate."
            )
            if args.long_minutes > 0:
                _long_clip(tmp, args.long_minutes, args)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
