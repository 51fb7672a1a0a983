"""Extraction on one GPU machine: the Ray Data pipeline against its two bounds, in one run.

On the same generated clips (``avarnet.data.synthetic.generate_benchmark``, written by one
process per core):

  (a) decoding alone   Ray Data decode tasks on the CPUs (``workflows.extract.decode_row``,
                       what the pipeline runs), materialised in the object store; and the
                       same decoder in a plain process pool (one process per core), which
                       gives sampled frames per second per core;
  (b) encoders alone   the backbones on the chunks (a) decoded, in this process, batched as
                       the pipeline's encoder actor batches them, once per precision
                       (``fp32``, ``bf16``, ``fp16``: ``FeatureSpec.precision``): speed-up
                       over fp32 and the features' difference from fp32's (per-segment
                       cosine, max abs difference);
  (c) end to end       ``workflows.extract.run_extract``: decode tasks on the CPUs ->
                       encoder actor(s) with ``gpus_per_worker=1`` -> Parquet, with the
                       GPU's utilisation sampled while it runs (``nvidia-smi -lms``, else
                       ``torch.cuda.utilization``);

and prints (c) / min(a, b) (target >= 0.8). (a) and (c) run on a quarter of the clips and on
all of them: the marginal rate (the difference) cancels fixed costs (actor start-up,
building the backbones on the GPU), which a dataset of thousands of clips does not see.
Then an ``avarnet_base`` training step (``benchmarks/gpu.py``'s). All figures are
clip-seconds per second unless named otherwise; the JSON result goes to ``--out``.

On this machine (CPU, tiny sizes, to prove it runs end to end)::

    flock /tmp/avarnet-ray.lock .venv/bin/python benchmarks/gpu_pipeline.py --device cpu \\
        --preset tiny --clips-per-class 2 --seconds 4 --train-steps 2 --out /tmp/gp.json

On a lent GPU machine (no Ray, decord, PyAV or MLflow there; ``benchmarks/gpu_bundle.sh
build`` makes the bundle here first, in the ignored ``.gpu_bundle/``), two ``run`` calls
one right after the other (the machine stays warm ~30 s between calls, and ``/tmp``
survives on the same machine)::

    run(carry=[".gpu_bundle/call1"], timeout_s=300,
        command="bash benchmarks/gpu_bundle.sh install /tmp/avarnet-gpu .gpu_bundle/call1")
    run(carry=[".gpu_bundle/call2"], timeout_s=540,
        command="bash benchmarks/gpu_bundle.sh install /tmp/avarnet-gpu .gpu_bundle/call2 && "
                "/tmp/avarnet-gpu/venv/bin/python benchmarks/gpu_pipeline.py "
                "--out $OUT/gpu_pipeline.json 2>&1 | tee $OUT/gpu_pipeline.log")

If the second call says ``/tmp/avarnet-gpu: call 1 missing``, the machine was replaced:
do both again. Defaults: ``full-random`` backbones, 10 classes x 16 clips x 15 s of
128 x 96 video at 12 fps = 2,400 clip-seconds (estimated at 2-3 minutes there from the
H200's encoder figure; not yet run there). Such small clips decode fast, so the run shows
whether the pipeline keeps the GPU busy; ``--size 640x360 --fps 24`` makes decoding cost
about 8x more per clip-second (and generating them about 30x).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu as gpu_bench  # noqa: E402  (benchmarks/gpu.py: the training step)

from avarnet.data.decode import ClipChunk, iter_chunks  # noqa: E402
from avarnet.data.synthetic import generate_benchmark  # noqa: E402
from avarnet.features.backbones import build_encoders, build_feature_spec  # noqa: E402

# -- clips ------------------------------------------------------------------------------


def _generate_part(args: tuple) -> list[dict]:
    folder, clips_per_class, seconds, fps, size, seed = args
    return generate_benchmark(
        folder, clips_per_class=clips_per_class, seconds=seconds, fps=fps, size=size, seed=seed
    )


def generate_clips(out: Path, clips_per_class: int, seconds: float, fps: int, size, jobs: int):
    """10 classes x ``clips_per_class`` clips, written by up to ``jobs`` processes (one
    ``generate_benchmark`` each, its own seed and folder); video ids made unique."""
    jobs = max(1, min(jobs, clips_per_class))
    per = [clips_per_class // jobs + (i < clips_per_class % jobs) for i in range(jobs)]
    work = [(out / f"part{i}", n, seconds, fps, size, i) for i, n in enumerate(per)]
    with ProcessPoolExecutor(jobs) as pool:
        parts = list(pool.map(_generate_part, work))
    rows = []
    for i, part in enumerate(parts):
        for r in part:
            rows.append({**r, "video_id": f"p{i}-{r['video_id']}"})
    return rows


# -- (a) decoding -----------------------------------------------------------------------


def _decode_count(job: tuple) -> tuple[int, float]:
    """Pool worker: decode one clip onto the grid; (sampled frames, clip seconds)."""
    path, opts = job
    frames, seconds = 0, 0.0
    for c in iter_chunks(path, opts):
        frames += c.frames.shape[0] * c.frames.shape[1]
        seconds = c.info.duration_s
    return frames, seconds


def decode_pool(rows: list[dict], opts, procs: int) -> dict:
    """The decoder alone in ``procs`` processes (one torch-free process per core)."""
    jobs = [(r["path"], dataclasses.replace(opts, threads=1)) for r in rows]
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(_decode_count, jobs[:procs]))  # start the processes, import decord
        t0 = time.perf_counter()
        done = list(pool.map(_decode_count, jobs, chunksize=1))
        wall = time.perf_counter() - t0
    frames, seconds = sum(f for f, _ in done), sum(s for _, s in done)
    return {
        "processes": procs,
        "wall_s": wall,
        "clip_seconds_per_s": seconds / wall,
        "sampled_frames_per_s": frames / wall,
        "sampled_frames_per_s_per_core": frames / wall / procs,
    }


def decode_ray(rows: list[dict], opts, args):
    """Ray Data decode tasks alone, materialised: (clip seconds, wall, the dataset)."""
    import ray

    from workflows.extract import decode_row

    items = [{"video_id": r["video_id"], "path": r["path"]} for r in rows]
    t0 = time.perf_counter()
    ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // args.clips_per_task))
    ds = ds.flat_map(decode_row, fn_kwargs={"opts": opts}, num_cpus=args.decode_cpus)
    ds = ds.materialize()
    wall = time.perf_counter() - t0
    seconds = {}
    for r in ds.select_columns(["video_id", "duration_s", "error"]).iter_rows():
        if r["error"]:
            raise SystemExit(f"decode failed: {r['error']}")
        seconds[r["video_id"]] = float(r["duration_s"])
    return sum(seconds.values()), wall, ds


def _to_chunks(ds) -> list[ClipChunk]:
    return [
        ClipChunk(
            info=None,
            chunk_index=int(r["chunk_index"]),
            n_chunks=int(r["n_chunks"]),
            segment_start=int(r["segment_start"]),
            n_segments_total=int(r["n_segments_total"]),
            bounds_s=np.asarray(r["bounds_s"], np.float64),
            frames=np.asarray(r["frames"]),
            audio=np.asarray(r["audio"], np.float32),
            has_audio=bool(r["has_audio"]),
        )
        for r in ds.iter_rows()
    ]


# -- the GPU's utilisation ---------------------------------------------------------------


class GpuSampler:
    """The GPU's utilisation (percent) every ``interval_ms`` while the block runs, from
    ``nvidia-smi --query-gpu=utilization.gpu -lms`` (or ``torch.cuda.utilization()``
    where there is no nvidia-smi). Disabled on a CPU."""

    def __init__(self, enabled: bool, interval_ms: int = 200):
        self.enabled, self.interval_ms = enabled, interval_ms
        self.samples: list[float] = []
        self.source = "none"
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if not self.enabled:
            return self
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            self._proc = subprocess.Popen(
                [*cmd, "-i", "0", "-lms", str(self.interval_ms)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
        else:
            self.source = "torch.cuda.utilization"
            self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):  # "[N/A]" on a GPU without the counter
                self.samples.append(float(line.strip()))

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_ms / 1000):
            try:
                self.samples.append(float(torch.cuda.utilization(0)))
            except Exception:  # no NVML (pynvml) in this torch: nothing to sample
                self.source = "unavailable"
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def summary(self) -> dict:
        s = np.asarray(self.samples, float)
        if not len(s):
            return {"source": self.source, "samples": 0}
        return {
            "source": self.source,
            "samples": len(s),
            "mean_pct": float(s.mean()),
            "p50_pct": float(np.percentile(s, 50)),
            "p90_pct": float(np.percentile(s, 90)),
        }


# -- (b) encoders -----------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def encode_all(spec, chunks: list[ClipChunk], device: str, batch: int, on_gpu: bool):
    """The encoders alone on ``chunks``, ``batch`` chunks per call as the pipeline's actor
    gets them (its default batch sizes): (wall seconds, features, GPU utilisation)."""
    enc = build_encoders(spec, device=device)
    with torch.inference_mode():
        enc.encode_chunks(chunks[:batch])  # warm-up: lazy init, the allocator, cuDNN plans
        _sync(device)
        feats = []
        with GpuSampler(on_gpu) as sampler:
            t0 = time.perf_counter()
            for i in range(0, len(chunks), batch):
                feats.extend(enc.encode_chunks(chunks[i : i + batch]))
            _sync(device)
            wall = time.perf_counter() - t0
    del enc
    if on_gpu:
        torch.cuda.empty_cache()
    return wall, feats, sampler.summary()


def _difference(ref: list, other: list, modality: int) -> dict:
    """Per-segment cosine (segments whose fp32 feature is not all zeros) and max abs
    difference between two runs' features."""
    a = np.concatenate([f[modality] for f in ref])
    b = np.concatenate([f[modality] for f in other])
    keep = np.linalg.norm(a, axis=1) > 0
    a, b = a[keep], b[keep]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "segments": int(keep.sum()),
        "cosine_mean": float(np.mean(cos)),
        "cosine_min": float(np.min(cos)),
        "max_abs_diff": float(np.abs(a - b).max()),
        "max_abs_fp32": float(np.abs(a).max()),
        "finite": bool(np.isfinite(b).all()),
    }


def bench_precisions(args, chunks: list[ClipChunk], clip_seconds: float, on_gpu: bool) -> dict:
    out, ref = {}, None
    for precision in args.precisions.split(","):
        spec = build_feature_spec(args.preset, precision=precision)
        try:
            wall, feats, util = encode_all(spec, chunks, args.device, args.batch_size, on_gpu)
        except ValueError as err:  # a precision this device cannot autocast to
            out[precision] = {"error": str(err)}
            continue
        r = {"wall_s": wall, "clip_seconds_per_s": clip_seconds / wall, "gpu_util": util}
        if precision == "fp32":
            ref = feats
        elif ref is not None:
            r["speedup_vs_fp32"] = r["clip_seconds_per_s"] / out["fp32"]["clip_seconds_per_s"]
            r["audio_vs_fp32"] = _difference(ref, feats, 0)
            r["visual_vs_fp32"] = _difference(ref, feats, 1)
        out[precision] = r
    return out


# -- (c) end to end ---------------------------------------------------------------------


def extract(rows: list[dict], spec, out: Path, args, on_gpu: bool) -> tuple[float, float, float]:
    """(clip seconds, wall seconds, seconds to the first finished clip) of run_extract."""
    from workflows.extract import run_extract

    s = run_extract(
        rows,
        out,
        spec,
        workers=args.workers,
        gpus_per_worker=1.0 if on_gpu else 0.0,
        decode_cpus=args.decode_cpus,
        encoder_cpus=1.0,
        clips_per_task=args.clips_per_task,
        batch_size=args.batch_size,
        threads_per_worker=None if on_gpu else 0,  # on a CPU the encoder uses every core
        progress=False,
    )
    if s.clips_failed:
        raise SystemExit(f"{s.clips_failed} clips failed: {s.errors[:2]}")
    return s.clip_seconds, s.wall_seconds, s.startup_seconds


def _marginal(small: tuple, big: tuple) -> float:
    return (big[0] - small[0]) / (big[1] - small[1])


# -- the run ----------------------------------------------------------------------------


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="full-random", help="feature preset (tiny on a CPU)")
    ap.add_argument("--clips-per-class", type=int, default=16, help="x 10 classes")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each clip")
    ap.add_argument("--size", default="128x96", help="video width x height (generated)")
    ap.add_argument("--fps", type=int, default=12, help="video frame rate (generated)")
    ap.add_argument("--small-fraction", type=float, default=0.25, help="clips of the small run")
    ap.add_argument("--batch-size", type=int, default=4, help="chunks per encoder call")
    ap.add_argument("--workers", type=int, default=1, help="encoder actors in (c)")
    ap.add_argument("--decode-cpus", type=float, default=1.0, help="CPUs per decode task")
    ap.add_argument("--clips-per-task", type=int, default=1, help="clips per decode task")
    ap.add_argument("--decode-procs", type=int, default=0, help="pool processes; 0 = cores")
    ap.add_argument("--precisions", default="fp32,bf16,fp16", help="(b)'s precisions")
    ap.add_argument("--pipeline-precision", default="fp32", help="(c)'s precision")
    ap.add_argument("--train-steps", type=int, default=50, help="0 skips the training step")
    ap.add_argument("--out", help="write the results as JSON here")
    return ap.parse_args()


def _setup(args, rows, clip_seconds: float, on_gpu: bool) -> dict:
    import ray

    return {
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "torch": torch.__version__,
        "ray": ray.__version__,
        "cpus": os.cpu_count(),
        "preset": args.preset,
        "clips": len(rows),
        "clip_seconds": clip_seconds,
        "video": f"{args.size} at {args.fps} fps, {args.seconds:g} s",
        "batch_size": args.batch_size,
        "decode_cpus": args.decode_cpus,
        "clips_per_task": args.clips_per_task,
        "workers": args.workers,
    }


def _report(r: dict) -> None:
    s, a, b, c = r["setup"], r["decode"], r["encoders"], r["extract"]
    print(
        f"\n{s['device']}, {s['cpus']} CPUs, torch {s['torch']}, Ray {s['ray']}; {s['preset']}; "
        f"{s['clips']} clips ({s['video']}) = {s['clip_seconds']:.0f} clip-seconds"
    )
    print(
        f"(a) decode, process pool ({a['pool']['processes']} procs): "
        f"{a['pool']['clip_seconds_per_s']:.1f} clip-s/s, "
        f"{a['pool']['sampled_frames_per_s_per_core']:.0f} sampled frames/s per core"
    )
    print(
        f"(a) decode, Ray Data tasks: {a['clip_seconds_per_s']:.1f} clip-s/s "
        f"(marginal {a['marginal_clip_seconds_per_s']:.1f})"
    )
    for p, e in b.items():
        if "error" in e:
            print(f"(b) encoders {p}: {e['error']}")
            continue
        line = f"(b) encoders {p}: {e['clip_seconds_per_s']:.1f} clip-s/s"
        if "speedup_vs_fp32" in e:
            au, vi = e["audio_vs_fp32"], e["visual_vs_fp32"]
            line += (
                f", {e['speedup_vs_fp32']:.2f}x fp32; vs fp32 cosine mean/min audio "
                f"{au['cosine_mean']:.5f}/{au['cosine_min']:.5f} visual "
                f"{vi['cosine_mean']:.5f}/{vi['cosine_min']:.5f}, max abs diff audio "
                f"{au['max_abs_diff']:.3g} visual {vi['max_abs_diff']:.3g}"
            )
        if e["gpu_util"].get("samples"):
            line += f"; GPU {e['gpu_util']['mean_pct']:.0f} % mean"
        print(line)
    util = c["gpu_util"]
    print(
        f"(c) Ray Data end to end ({c['precision']}): {c['clip_seconds_per_s']:.1f} clip-s/s "
        f"(marginal {c['marginal_clip_seconds_per_s']:.1f}; first clip after "
        f"{c['startup_s']:.1f} s)"
        + (
            f"; GPU utilisation mean {util['mean_pct']:.0f} %, p50 {util['p50_pct']:.0f} % "
            f"({util['samples']} samples, {util['source']})"
            if util.get("samples")
            else ""
        )
    )
    print(
        f"(c) / min(a, b) = {r['ratio']:.2f} end to end, {r['ratio_marginal']:.2f} marginal "
        f"(target >= 0.8; bound: {r['bound']}); on shared cores the bound is "
        f"1 / (1/a + 1/b) = {r['shared_cores_bound']:.1f} clip-s/s"
    )
    if "train_step" in r:
        t = r["train_step"]
        print(
            f"training step ({t['model']}, {t['batch']} x {t['segments']}): {t['ms_per_step']:.1f} ms"
        )


def main() -> None:
    args = _args()
    import ray

    from glue.runtime import init_kwargs, quiet_driver

    on_gpu = args.device.startswith("cuda")
    size = tuple(int(x) for x in args.size.lower().split("x"))
    spec = build_feature_spec(args.preset, precision=args.pipeline_precision)
    opts = spec.decode_options()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        rows = generate_clips(
            tmp / "clips", args.clips_per_class, args.seconds, args.fps, size, cores
        )
        print(f"{len(rows)} clips generated in {time.perf_counter() - t0:.1f} s", flush=True)
        n_small = max(1, round(len(rows) * args.small_fraction))
        pool = decode_pool(rows, opts, args.decode_procs or cores)  # before Ray and CUDA
        ray.init(**init_kwargs(num_cpus=cores, address=None))
        quiet_driver()
        try:
            decode_ray(rows[: min(len(rows), 4)], opts, args)  # warm-up: Ray Data's workers
            a_small = decode_ray(rows[:n_small], opts, args)[:2]
            clip_seconds, a_wall, decoded = decode_ray(rows, opts, args)
            chunks = _to_chunks(decoded)
            del decoded
            print(f"(a) done: {clip_seconds / a_wall:.1f} clip-s/s", flush=True)
            enc = bench_precisions(args, chunks, clip_seconds, on_gpu)
            del chunks
            print("(b) done", flush=True)
            c_small = extract(rows[:n_small], spec, tmp / "feat-small", args, on_gpu)
            with GpuSampler(on_gpu) as sampler:
                c_big = extract(rows, spec, tmp / "feat-big", args, on_gpu)
            print("(c) done", flush=True)
        finally:
            ray.shutdown()
    a = clip_seconds / a_wall
    b = enc[args.pipeline_precision]["clip_seconds_per_s"]
    c, c_marg = c_big[0] / c_big[1], _marginal(c_small, c_big)
    result = {
        "setup": _setup(args, rows, clip_seconds, on_gpu),
        "decode": {
            "pool": pool,
            "clip_seconds_per_s": a,
            "marginal_clip_seconds_per_s": _marginal(a_small, (clip_seconds, a_wall)),
            "wall_s": a_wall,
        },
        "encoders": enc,
        "extract": {
            "precision": args.pipeline_precision,
            "clip_seconds_per_s": c,
            "marginal_clip_seconds_per_s": c_marg,
            "wall_s": c_big[1],
            "startup_s": c_big[2],
            "small_run": {"clips": n_small, "clip_seconds": c_small[0], "wall_s": c_small[1]},
            "gpu_util": sampler.summary(),
        },
        "ratio": c / min(a, b),
        "ratio_marginal": c_marg / min(a, b),
        "bound": "decode (a)" if a < b else "encoders (b)",
        # Where decoding and encoding share the same cores (a CPU-only machine), the best
        # the pipeline can do is the two in turn.
        "shared_cores_bound": 1 / (1 / a + 1 / b),
    }
    if args.train_steps:
        result["train_step"] = gpu_bench.bench_train_step(args.device, args.train_steps)
    _report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"results: {args.out}")


if __name__ == "__main__":
    main()
