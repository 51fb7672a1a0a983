"""Online scoring latency and throughput: Ray Serve over HTTP against the in-process bound.

For one generated 10-second clip and one model (seeded weights: latency does not depend
on what the weights learned), in one run:

  bound        the same clip through the library in this process: decode + encoders
               (built from the model's FeatureSpec) + Predictor, with as many torch
               threads as one Encoder replica gets;
  HTTP c=1     sequential POST /v1/score requests (multipart upload) to the deployed app;
  HTTP c=8     eight client threads for ``--load-seconds``, while Serve's status is
               sampled for the replica count of each deployment.

Prints p50/p95 latency (ms) and throughput (clips/s) for each, the ratio of HTTP c=1 p50
to the bound's p50 (target <= 1.25), failures, and the replicas seen.

    .venv/bin/python benchmarks/serve.py [--preset tiny|full-random] [--model avarnet_base]
        [--requests 30] [--load-seconds 40] [--encoder-cpus 0.8] [--max-replicas 2]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(latencies_ms: list[float], wall_s: float) -> dict:
    a = np.asarray(latencies_ms)
    return {
        "n": len(a),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "clips_per_s": len(a) / wall_s,
    }


class Bound:
    """The clip through the library in this process: decode + encoders + Predictor."""

    def __init__(self, artifact: Path, threads: int):
        import torch

        from avarnet.features.backbones import build_encoders
        from avarnet.predictor import Predictor

        torch.set_num_threads(threads)
        self.predictor = Predictor.from_dir(artifact)
        self.enc = build_encoders(self.predictor.spec)

    def __call__(self, clip: Path) -> float:
        t0 = time.perf_counter()
        f = self.enc.encode_clip(clip)
        self.predictor.predict([f.audio], [f.visual], [f.has_audio])
        return 1e3 * (time.perf_counter() - t0)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="tiny", help="feature preset (tiny, full-random)")
    p.add_argument("--model", default="avarnet_base", help="model preset")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length")
    p.add_argument("--requests", type=int, default=30, help="requests at concurrency 1")
    p.add_argument("--load-seconds", type=float, default=40.0, help="duration at concurrency 8")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--encoder-cpus", type=float, default=0.8, help="CPUs per Encoder replica")
    p.add_argument("--max-replicas", type=int, default=2, help="Encoder autoscaling ceiling")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray")
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args()


def main() -> None:
    args = _args()

    import ray

    from avarnet.data.manifest import read_manifest
    from avarnet.data.synthetic import generate_benchmark
    from avarnet.features.backbones import build_feature_spec
    from avarnet.predictor import seeded_artifact
    from glue.runtime import init_kwargs, quiet_driver
    from serve.deploy import deploy, shutdown

    tmp = Path(tempfile.mkdtemp(prefix="avarnet-bench-serve-"))
    generate_benchmark(tmp / "data", clips_per_class=1, seconds=args.seconds, seed=3)
    rows = read_manifest(tmp / "data" / "manifest.csv").rows
    clip = Path(next(r["path"] for r in rows if r["label"] == "Explosion"))
    labels = sorted({r["label"] for r in rows})
    spec = build_feature_spec(args.preset)
    artifact = seeded_artifact(tmp / "model", args.model, spec, labels)
    threads = max(1, int(args.encoder_cpus))
    print(
        f"clip: {clip.name}, {args.seconds:.0f} s, {clip.stat().st_size / 1e6:.2f} MB; "
        f"preset {args.preset}, model {args.model}; encoder threads {threads}"
    )

    bound = Bound(artifact, threads)
    ray.init(**init_kwargs(num_cpus=args.num_cpus, address=None))
    quiet_driver()
    try:
        t0 = time.perf_counter()
        url = deploy(
            {
                "model": str(artifact),
                "encoder_cpus": args.encoder_cpus,
                "classifier_cpus": 0.1,
                "encoder_min_replicas": 1,
                "encoder_max_replicas": args.max_replicas,
                "threads": threads,
            },
            port=_free_port(),
        )
        startup = time.perf_counter() - t0
        c1, bound_stats = _sequential(url, clip, bound, args.requests)
        c8, seen, failures = _under_load(url, clip, args.concurrency, args.load_seconds)
    finally:
        shutdown()
        ray.shutdown()
    _report(args, threads, startup, bound_stats, c1, c8, seen, failures)


def _sequential(url: str, clip: Path, bound: Bound, requests_n: int) -> tuple[dict, dict]:
    """``(HTTP c=1 stats, bound stats)`` of ``requests_n`` requests each, after a warm-up."""
    import requests

    from serve.client import score_file

    http = requests.Session()
    for _ in range(2):  # warm-up, both paths
        score_file(url, clip, session=http)
        bound(clip)
    # Interleaved, so that both see the same machine (Ray's idle processes included).
    lat, lat_bound = [], []
    for _ in range(requests_n):
        lat_bound.append(bound(clip))
        t0 = time.perf_counter()
        score_file(url, clip, session=http)
        lat.append(1e3 * (time.perf_counter() - t0))
    wall, wall_bound = sum(lat) / 1e3, sum(lat_bound) / 1e3
    c1, bound_stats = _stats(lat, wall), _stats(lat_bound, wall_bound)
    print(f"bound (in-process): p50 {bound_stats['p50_ms']:.0f} ms")
    print(f"HTTP c=1: p50 {c1['p50_ms']:.0f} ms, p95 {c1['p95_ms']:.0f} ms")
    return c1, bound_stats


def _under_load(
    url: str, clip: Path, concurrency: int, load_seconds: float
) -> tuple[dict, dict[str, int], list[str]]:
    """``(stats, most replicas seen per deployment, failures)`` of ``concurrency`` client
    threads for ``load_seconds``, while Serve's replica counts are sampled."""
    import requests

    from serve.client import score_file
    from serve.deploy import replica_counts

    seen: dict[str, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for dep, n in replica_counts().items():
                seen[dep] = max(seen.get(dep, 0), n)
            stop.wait(0.5)

    failures: list[str] = []
    lat8: list[float] = []
    deadline = time.perf_counter() + load_seconds

    def client() -> None:
        s = requests.Session()
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                score_file(url, clip, session=s)
                lat8.append(1e3 * (time.perf_counter() - t0))
            except Exception as err:  # counted, reported
                failures.append(str(err))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t_all = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    c8 = _stats(lat8, time.perf_counter() - t_all)
    stop.set()
    sampler.join()
    print(
        f"HTTP c={concurrency}: p50 {c8['p50_ms']:.0f} ms, p95 {c8['p95_ms']:.0f} ms, "
        f"{c8['clips_per_s']:.2f} clips/s, failures {len(failures)}"
    )
    return c8, seen, failures


def _report(
    args: argparse.Namespace,
    threads: int,
    startup: float,
    bound: dict,
    c1: dict,
    c8: dict,
    seen: dict[str, int],
    failures: list[str],
) -> None:
    """Print the table and the checks; write ``--json``."""
    ratio = c1["p50_ms"] / bound["p50_ms"]
    result = {
        "preset": args.preset,
        "model": args.model,
        "clip_seconds": args.seconds,
        "encoder_threads": threads,
        "startup_s": startup,
        "bound": bound,
        "http_c1": c1,
        f"http_c{args.concurrency}": c8,
        "ratio_c1_p50": ratio,
        "failures": len(failures),
        "max_replicas_seen": seen,
        "throughput_gain_c8_vs_c1": c8["clips_per_s"] / c1["clips_per_s"],
    }
    print()
    print(f"{'':<14}{'p50 ms':>9}{'p95 ms':>9}{'clips/s':>9}")
    for name, s in (("bound", bound), ("HTTP c=1", c1), (f"HTTP c={args.concurrency}", c8)):
        print(f"{name:<14}{s['p50_ms']:>9.0f}{s['p95_ms']:>9.0f}{s['clips_per_s']:>9.2f}")
    print(f"HTTP c=1 p50 / bound p50 = {ratio:.3f}  (target <= 1.25)")
    print(f"replicas seen under load: {seen}  (Encoder min 1, max {args.max_replicas})")
    print(f"failed requests: {len(failures)}; service start-up {startup:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
