"""Training epoch time: Ray Train (one worker) against a plain PyTorch loop, on the same
feature table, model, batch size and per-epoch work (a training pass and a validation
pass), in one run.

  plain      batches cut from the table in memory (the same collation code), AdamW, the
             same loss; no checkpoints, no logging;
  Ray Train  ``glue.train.build_trainer`` with ``ScalingConfig(num_workers=1)``:
             the table from the object store (rows by rank), per-epoch checkpoint,
             ``ray.train.report``, MLflow metrics.

Seconds per epoch for Ray Train are the wall time between consecutive epoch reports (from
the MLflow metric timestamps), after the first epoch; the loop's own ``epoch_seconds`` (the
training pass alone, inside the worker) shows what the rest costs. The first epoch and the
worker start-up are printed apart.

    .venv/bin/python benchmarks/train.py [--features DIR | --clips-per-class 20]
        [--models avarnet_tiny,avarnet_base] [--epochs 8] [--batch-size 16]
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


def _plain_loop(cfg, features: Path, epochs: int) -> list[float]:
    """Seconds per epoch of the plain loop (train + validation pass): the library's own
    training step (:mod:`avarnet.training`) on tables in memory."""
    import dataclasses

    import torch

    from avarnet import training as T
    from avarnet.models import create_model
    from glue.train import check_training_data, model_kwargs

    facts = check_training_data(features)
    labels = facts.labels
    normal = labels.index("Normal") if "Normal" in labels else None
    tables = T.read_split_tables(features)
    torch.manual_seed(cfg.train.seed)
    kwargs = model_kwargs(cfg, facts.spec, len(labels), normal, facts.multilabel)
    model = create_model(cfg.model.name, **kwargs)
    recipe = dataclasses.replace(T.Recipe.from_config(cfg.train), epochs=epochs, patience=None)
    times = []
    t0 = time.perf_counter()

    def on_epoch(metrics, best, optimizer) -> None:
        nonlocal t0
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()

    T.fit(model, tables["train"], tables["val"], recipe, labels=labels, on_epoch=on_epoch)
    return times


def _ray_train(cfg, features: Path, tmp: Path) -> tuple[list[float], list[float], float]:
    """(wall seconds between epoch reports, the loop's own training-pass seconds, fit wall)."""
    from mlflow.tracking import MlflowClient

    from glue import tracking
    from glue.train import build_trainer

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with tracking.start_run(uri, "bench", cfg.model.name) as run:
        trainer = build_trainer(cfg, features, tracking_uri=uri, run_id=run.run_id)
        t0 = time.perf_counter()
        result = trainer.fit()
        fit_s = time.perf_counter() - t0
        if result.error:
            raise result.error
    client = MlflowClient(uri)
    steps = sorted(client.get_metric_history(run.run_id, "train_loss"), key=lambda m: m.step)
    walls = [(b.timestamp - a.timestamp) / 1000 for a, b in zip(steps, steps[1:])]
    inner = sorted(client.get_metric_history(run.run_id, "epoch_seconds"), key=lambda m: m.step)
    return walls, [m.value for m in inner], fit_s


def _features(args, tmp: Path) -> Path:
    if args.features:
        return Path(args.features).resolve()
    from avarnet.data.manifest import read_manifest
    from avarnet.data.synthetic import generate_benchmark
    from avarnet.features.backbones import build_feature_spec
    from workflows.extract import run_extract

    generate_benchmark(tmp / "bench", clips_per_class=args.clips_per_class, seconds=4.0)
    rows = read_manifest(tmp / "bench" / "manifest.csv").rows
    run_extract(rows, tmp / "features", build_feature_spec("tiny"), progress=False)
    return tmp / "features"


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--features", help="an existing feature table (default: generate one)")
    ap.add_argument("--clips-per-class", type=int, default=20)
    ap.add_argument("--models", default="avarnet_tiny,avarnet_base")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    return ap.parse_args()


def main() -> None:
    args = _args()

    import ray
    import torch

    from glue.runtime import init_kwargs, quiet_driver

    ray.init(**init_kwargs(num_cpus=os.cpu_count(), address=None))
    quiet_driver()
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            features = _features(args, tmp)
            from avarnet.features import table as ft

            n = {s: 0 for s in ("train", "val", "test")}
            for s in ft.read_features(features).split:
                n[s] = n.get(s, 0) + 1
            print(f"table: {features} {n}; batch {args.batch_size}; {args.epochs} epochs")
            print(
                f"{'model':<14} {'plain s/ep':>10} {'Ray s/ep':>9} {'ratio':>6} "
                f"{'Ray pass':>9} {'Ray 1st ep':>10} {'Ray fit':>8}"
            )
            for name in args.models.split(","):
                cfg = load_config(
                    None,
                    [
                        f"output_dir={tmp / name}",
                        f"model.name={name}",
                        f"train.epochs={args.epochs}",
                        f"train.batch_size={args.batch_size}",
                        "train.workers=1",
                        "train.cpus_per_worker=1",
                        "train.threads_per_worker=0",  # but torch uses every core
                    ],
                )
                # torch uses every core in the Ray worker and in the loop.
                torch.set_num_threads(os.cpu_count() or 1)
                plain = _plain_loop(cfg, features, args.epochs)
                walls, inner, fit_s = _ray_train(cfg, features, tmp / name)
                p = float(np.median(plain[1:]))
                r = float(np.median(walls[1:] if len(walls) > 2 else walls))
                print(
                    f"{name:<14} {p:>10.3f} {r:>9.3f} {r / p:>6.2f} "
                    f"{float(np.median(inner[1:])):>9.3f} {inner[0]:>10.2f} {fit_s:>8.1f}"
                )
            print(
                "s/ep: median seconds per epoch after the first (train + validation pass); "
                "'Ray pass': the training pass alone inside the worker; 'Ray fit': the whole "
                "trainer.fit() wall time, worker start-up included."
            )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
