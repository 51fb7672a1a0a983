"""The fusion ablation on the generated benchmark: early fusion against audio-only,
visual-only and late fusion, over several seeds, test split.

Generates the benchmark (real MP4 files), extracts its features with the ``tiny`` preset
(randomly initialised backbones: no model hub here) through the Ray Data job, then trains
every (fusion, seed) pair with the real trainer (``workflows.train.run_training``: Ray
Train, MLflow in a temporary sqlite store) and prints test accuracy and macro-F1 as mean
and standard deviation over the seeds, and early fusion's lead over the better single
modality.

    .venv/bin/python benchmarks/ablation.py [--clips-per-class 80] [--degrade-fraction 0.1]
        [--seeds 0,1,2] [--fusions early,audio,visual,late] [key=value ...]

``key=value`` arguments override the training configuration (``train.epochs=60``,
``model.pooling=topk``; see ``avarnet.config``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from avarnet.config import load_config  # noqa: E402

# The configuration the README's table uses (also the demo's model and optimiser).
DEFAULTS = [
    "model.name=avarnet_tiny",
    "model.modality_dropout=0.0",
    "train.epochs=80",
    "train.lr=0.001",
    "train.weight_decay=0.05",
    "train.batch_size=16",
    "train.workers=0",
]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--features", help="an existing feature table (default: generate one)")
    ap.add_argument("--clips-per-class", type=int, default=80)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--degrade-fraction", type=float, default=0.1)
    ap.add_argument("--no-audio-fraction", type=float, default=0.0)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--fusions", default="early,audio,visual,late")
    ap.add_argument("overrides", nargs="*", help="key=value training config overrides")
    args = ap.parse_args()

    import ray

    from workflows.runtime import init_kwargs, quiet_driver
    from workflows.train import run_training

    ray.init(**init_kwargs(num_cpus=os.cpu_count(), address=None))
    quiet_driver()
    t_start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            features = Path(args.features) if args.features else _make_features(args, tmp)
            results: dict[str, list[tuple[float, float]]] = {}
            for fusion in args.fusions.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    cfg = load_config(
                        None,
                        [
                            f"output_dir={tmp / 'runs'}",
                            *DEFAULTS,
                            f"model.fusion={fusion}",
                            f"train.seed={seed}",
                            *args.overrides,
                        ],
                    )
                    res = run_training(
                        cfg,
                        features,
                        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                        run_name=f"{fusion}-seed{seed}",
                        register=False,
                    )
                    results.setdefault(fusion, []).append((res["accuracy"], res["macro_f1"]))
                    print(
                        f"  {fusion:<7} seed {seed}: accuracy {res['accuracy']:.3f} "
                        f"macro-F1 {res['macro_f1']:.3f} (best epoch {res['best_epoch']}, "
                        f"{res['report']['clips']} {res['report']['split']} clips)",
                        flush=True,
                    )
            _table(results, args)
    finally:
        ray.shutdown()
    print(f"wall time {time.perf_counter() - t_start:.0f} s")


def _make_features(args, tmp: Path) -> Path:
    from avarnet.data.manifest import read_manifest
    from avarnet.data.synthetic import generate_benchmark
    from avarnet.features.backbones import build_feature_spec
    from workflows.extract import run_extract

    generate_benchmark(
        tmp / "bench",
        clips_per_class=args.clips_per_class,
        seconds=args.seconds,
        seed=args.data_seed,
        degrade_fraction=args.degrade_fraction,
        no_audio_fraction=args.no_audio_fraction,
    )
    rows = read_manifest(tmp / "bench" / "manifest.csv").rows
    s = run_extract(rows, tmp / "features", build_feature_spec("tiny"), progress=False)
    print(
        f"benchmark: {args.clips_per_class} clips/class x {args.seconds:g} s, degraded "
        f"{args.degrade_fraction:.0%}, no audio {args.no_audio_fraction:.0%}; extracted "
        f"{s.clips_ok} clips in {s.wall_seconds:.0f} s",
        flush=True,
    )
    return tmp / "features"


def _table(results: dict[str, list[tuple[float, float]]], args) -> None:
    seeds = len(next(iter(results.values())))
    print(f"\n| fusion | test accuracy (mean ± std, {seeds} seeds) | test macro-F1 |")
    print("|---|---|---|")
    means = {}
    for fusion, rs in results.items():
        acc, f1 = np.array(rs).T
        means[fusion] = acc.mean()
        print(
            f"| {fusion} | {acc.mean():.3f} ± {acc.std():.3f} | {f1.mean():.3f} ± {f1.std():.3f} |"
        )
    if {"early", "audio", "visual"} <= set(means):
        lead = means["early"] - max(means["audio"], means["visual"])
        print(f"\nearly fusion leads the better single modality by {100 * lead:.1f} points")
    print("overrides:", " ".join(DEFAULTS + args.overrides))


if __name__ == "__main__":
    main()
