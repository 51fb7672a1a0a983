"""The GPU path's two hot loops on one device: feature encoders and an MTCN training step.

Runs without Ray, decord or MLflow (what a bare GPU machine has: torch, timm,
transformers), on synthetic decoded chunks, so it measures the device's compute bound
for ``benchmarks/extract.py``'s (c) and ``benchmarks/train.py``'s training pass:

- encoders: ``full-random`` backbones (mobilevit_s at 256 px, the wav2vec2-base
  configuration), chunks of 32 one-second segments x 8 frames plus 32 s of 16 kHz audio,
  in batches of ``--chunks-per-call``, at each of ``--precision`` (``fp32``, ``bf16``,
  ``fp16``: ``FeatureSpec.precision``, autocast) -> clip-seconds per second;
- training: ``avarnet_base`` (4 stages x 10 layers x 64 filters) on 768 + 640-d features,
  batch 16 x 64 segments, AdamW -> milliseconds per step and clips per second;
- scoring: what one Serve Encoder + Classifier replica computes per request on a GPU: a
  10-second clip (10 segments x 8 frames, 10 s of audio) through the encoders and the
  ``Predictor`` (``avarnet_base``), one clip per call (latency p50/p95) and four per call
  (an ``@serve.batch`` under load: clips per second). Decoding is not included.

    python benchmarks/gpu.py [--device cuda] [--precision fp32,bf16,fp16] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avarnet.data.decode import ClipChunk  # noqa: E402
from avarnet.features.backbones import build_encoders, build_feature_spec  # noqa: E402
from avarnet.models import create_model  # noqa: E402
from avarnet.models.losses import avarnet_loss  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _chunk(spec, n: int, seed: int = 0) -> ClipChunk:
    rng = np.random.default_rng(seed)
    k, s = spec.frames_per_segment, spec.image_size
    return ClipChunk(
        info=None,
        chunk_index=0,
        n_chunks=1,
        segment_start=0,
        n_segments_total=n,
        bounds_s=np.arange(n + 1, dtype=np.float64),
        frames=rng.integers(0, 255, (n, k, s, s, 3), dtype=np.uint8),
        audio=(0.1 * rng.standard_normal(n * spec.sample_rate)).astype(np.float32),
        has_audio=True,
    )


def bench_encoders(
    device: str, preset: str, chunks_per_call: int, calls: int, precision: str = "fp32"
) -> dict:
    spec = build_feature_spec(preset, precision=precision)
    enc = build_encoders(spec, device=device, visual_batch_size=128, audio_batch_size=8)
    n = 32
    chunk = _chunk(spec, n)
    batch = [chunk] * chunks_per_call
    with torch.inference_mode():
        enc.encode_chunks(batch)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            enc.encode_chunks(batch)
        _sync(device)
        wall = time.perf_counter() - t0
    clip_seconds = calls * chunks_per_call * n
    return {
        "preset": preset,
        "precision": precision,
        "chunks_per_call": chunks_per_call,
        "clip_seconds": clip_seconds,
        "seconds": wall,
        "clip_seconds_per_s": clip_seconds / wall,
    }


def bench_train_step(device: str, steps: int, batch: int = 16, t: int = 64) -> dict:
    torch.manual_seed(0)
    model = create_model("avarnet_base", audio_dim=768, visual_dim=640, num_classes=10)
    model = model.to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    audio = torch.randn(batch, t, 768, device=device)
    visual = torch.randn(batch, t, 640, device=device)
    mask = torch.ones(batch, t, dtype=torch.bool, device=device)
    has_audio = torch.ones(batch, dtype=torch.bool, device=device)
    targets = torch.randint(0, 10, (batch,), device=device)

    def step():
        out = model(audio, visual, mask, has_audio)
        loss, _ = avarnet_loss(out, targets, mask, smoothing_weight=0.15)
        optim.zero_grad()
        loss.backward()
        optim.step()

    for _ in range(3):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    wall = time.perf_counter() - t0
    return {
        "model": "avarnet_base",
        "batch": batch,
        "segments": t,
        "ms_per_step": 1000 * wall / steps,
        "clips_per_s": steps * batch / wall,
    }


def bench_scoring(device: str, preset: str, calls: int, seconds: int = 10) -> dict:
    import tempfile

    from avarnet.predictor import Predictor, seeded_artifact

    spec = build_feature_spec(preset)
    enc = build_encoders(spec, device=device, visual_batch_size=128, audio_batch_size=8)
    labels = [f"class{i}" for i in range(9)] + ["Normal"]
    folder = seeded_artifact(Path(tempfile.mkdtemp()) / "model", "avarnet_base", spec, labels)
    predictor = Predictor.from_dir(folder, device=device)
    clip = _chunk(spec, seconds)

    def request(n: int) -> float:
        t0 = time.perf_counter()
        feats = enc.encode_chunks([clip] * n)
        predictor.predict([a for a, _ in feats], [v for _, v in feats], [True] * n)
        _sync(device)
        return time.perf_counter() - t0

    with torch.inference_mode():
        request(1)
        request(4)  # warm-up
        one = [request(1) for _ in range(calls)]
        four = [request(4) for _ in range(calls)]
    return {
        "preset": preset,
        "clip_seconds": seconds,
        "p50_ms_1": 1000 * float(np.percentile(one, 50)),
        "p95_ms_1": 1000 * float(np.percentile(one, 95)),
        "clips_per_s_1": 1 / float(np.mean(one)),
        "p50_ms_4": 1000 * float(np.percentile(four, 50)),
        "clips_per_s_4": 4 / float(np.mean(four)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="full-random")
    ap.add_argument("--chunks-per-call", default="1,4")
    ap.add_argument(
        "--precision", default="fp32", help="encoder precisions, comma-separated (fp32,bf16,fp16)"
    )
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--only-scoring", action="store_true", help="skip encoders and training")
    args = ap.parse_args()
    if args.only_scoring:
        result = {
            "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
            "torch": torch.__version__,
            "scoring": bench_scoring(args.device, args.preset, max(10, args.calls)),
        }
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2))
        return
    result = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "encoders": [
            bench_encoders(args.device, args.preset, int(c), args.calls, precision)
            for precision in args.precision.split(",")
            for c in args.chunks_per_call.split(",")
        ],
        "train_step": bench_train_step(args.device, args.steps),
        "scoring": bench_scoring(args.device, args.preset, max(10, args.calls)),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
