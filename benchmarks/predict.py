"""Batch scoring throughput: `avarnet predict`'s pipeline against extraction alone, on the
same generated clips and the same backbones, in one run.

  (e) extract   ``workflows.extract.run_extract``: decode tasks -> encoder actors -> Parquet
  (p) predict   ``workflows.predict.run_predict``: the same decode tasks and encoder
                actors, then the model's Predictor in batches -> scores, JSON, events,
                report

Both run on a small and a large set of clips; clip-seconds per wall second end to end and
marginal (the difference between the two sets cancels fixed costs: actor start-up,
building the backbones), and the ratio p/e (target >= 0.9). Then the peak memory of
scoring one long clip (``--long-minutes``, 64x64 at 8 fps) in a separate process, against
the size of that clip's sampled frames.

    .venv/bin/python benchmarks/predict.py [--preset tiny] [--clips 16:64] [--long-minutes 30]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rows(root: Path, n: int, seconds: float) -> list[dict]:
    from avarnet.data.manifest import read_manifest
    from avarnet.data.synthetic import generate_benchmark

    per_class = max(1, -(-n // 10))
    generate_benchmark(root, clips_per_class=per_class, seconds=seconds, seed=0)
    return read_manifest(root / "manifest.csv").rows[:n]


def _extract(rows, spec, out: Path) -> tuple[float, float]:
    from workflows.extract import run_extract

    t0 = time.perf_counter()
    s = run_extract(rows, out, spec, workers=1, progress=False)
    return s.clip_seconds, time.perf_counter() - t0


def _predict(rows, predictor, model, out: Path) -> tuple[float, float]:
    from workflows.predict import run_predict

    t0 = time.perf_counter()
    s = run_predict(rows, out, predictor, model, workers=1, progress=False)
    return s.clip_seconds, time.perf_counter() - t0


def _long_clip_peak(minutes: float, model_dir: str) -> dict:
    """Score one long clip in a fresh process; its peak RSS and the frames' size."""
    from avarnet.predictor import Predictor

    tmp = Path(tempfile.mkdtemp(prefix="avarnet-bench-predict-"))
    clip = tmp / "long.mp4"
    seconds = int(minutes * 60)
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i"]
        + ["testsrc2=size=64x64:rate=8", "-f", "lavfi", "-i", "sine=sample_rate=16000"]
        + ["-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(clip)],
        check=True,
    )
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i"]
        + ["testsrc2=size=64x64:rate=8", "-f", "lavfi", "-i", "sine=sample_rate=16000"]
        + ["-t", "4", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"]
        + [str(tmp / "short.mp4")],
        check=True,
    )
    spec = Predictor.from_dir(model_dir).spec
    frames_bytes = seconds * spec.frames_per_segment * spec.image_size**2 * 3  # 1 s segments
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--_score-one", str(clip), model_dir]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["frames_mb"] = frames_bytes / 2**20
    out["clip_minutes"] = minutes
    return out


def _score_one(clip: str, model_dir: str) -> None:
    """In the child process: score one clip in-process, print its peak RSS."""
    from avarnet.predictor import Predictor
    from workflows.predict import ModelId, score_one_file

    predictor, model = Predictor.from_dir(model_dir), ModelId("m", "v", "u", "d")
    short = Path(clip).with_name("short.mp4")  # the process's own peak on a 4 s clip first
    score_one_file(str(short), predictor, model)
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    answer = score_one_file(clip, predictor, model)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"segments": len(answer["segments"]), "peak_mb": peak_mb, "base_mb": base_mb}))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--_score-one":
        return _score_one(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--clips", default="16:64", help="small:large clip counts")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--long-minutes", type=float, default=30.0, help="0 skips the long clip")
    args = ap.parse_args()

    import ray

    from avarnet.features.backbones import build_feature_spec
    from avarnet.predictor import seeded_artifact
    from glue.runtime import init_kwargs
    from workflows.predict import load_model

    small, large = (int(x) for x in args.clips.split(":"))
    tmp = Path(tempfile.mkdtemp(prefix="avarnet-bench-predict-"))
    rows = _rows(tmp / "clips", large, args.seconds)
    spec = build_feature_spec(args.preset)
    labels = sorted({r["label"] for r in rows})
    model_dir = seeded_artifact(tmp / "model", "avarnet_tiny", spec, labels)
    predictor, model = load_model(str(model_dir), f"sqlite:///{tmp / 'mlflow.db'}", tmp)
    ray.init(**init_kwargs(num_cpus=None))
    # Warm-up (Ray's workers, the backbones' first build), not counted.
    _extract(rows[:2], spec, tmp / "features-warm")
    _predict(rows[:2], predictor, model, tmp / "predict-warm")
    results = {}
    for name, n in (("small", small), ("large", large)):
        e = _extract(rows[:n], spec, tmp / f"features-{name}")
        p = _predict(rows[:n], predictor, model, tmp / f"predict-{name}")
        results[name] = {"extract": e, "predict": p}
        print(
            f"{name:5s} {n:3d} clips: extract {e[0] / e[1]:6.2f} clip-s/s ({e[1]:.1f} s), "
            f"predict {p[0] / p[1]:6.2f} clip-s/s ({p[1]:.1f} s), ratio {e[1] / p[1]:.2f}",
            flush=True,
        )
    ray.shutdown()

    def marginal(key: str) -> float:
        (cs_s, w_s), (cs_l, w_l) = results["small"][key], results["large"][key]
        return (cs_l - cs_s) / max(w_l - w_s, 1e-9)

    me, mp = marginal("extract"), marginal("predict")
    print(f"marginal: extract {me:.2f} clip-s/s, predict {mp:.2f} clip-s/s, ratio {mp / me:.2f}")
    summary = {"marginal_extract": me, "marginal_predict": mp, "marginal_ratio": mp / me}
    if args.long_minutes > 0:
        long = _long_clip_peak(args.long_minutes, str(model_dir))
        print(
            f"long clip: {long['clip_minutes']:g} min, {long['segments']} segments in "
            f"{long['seconds']} s; peak RSS {long['peak_mb']:.0f} MB, "
            f"{long['peak_mb'] - long['base_mb']:.0f} MB above the same process on a 4 s clip, "
            f"against {long['frames_mb']:.0f} MB of sampled frames"
        )
        summary["long"] = long
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
