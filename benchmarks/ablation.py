"""The fusion ablation on the generated benchmark: early fusion against audio-only,
visual-only and late fusion MTCNs, beside a linear floor, over several seeds, test split.

Generates the benchmark (real MP4 files; the defaults are the 12-clips-per-class run of
issue #14: 12 clips per class of 4 s, synth seed 7, 30 % degraded), extracts its features
with the ``tiny`` preset (randomly initialised backbones: no model hub here) through the
Ray Data job, then for every (fusion, seed) trains the default model with the default
recipe and prints test accuracy and macro-F1 as mean and standard deviation over seeds.

The MTCNs train in this process with :func:`avarnet.training.fit` (the step the Ray Train
loop runs, on the same splits); ``--ray`` trains them through the real trainer instead
(``glue.train.run_training``: Ray Train, MLflow in a temporary sqlite store).

The floor: a logistic regression on clip-mean features (each step LayerNorm'd as the
model's fusion does, then standardised per dimension), fitted on the train split, for
audio ‖ visual and for each modality alone. It is deterministic, so its std is 0.

    .venv/bin/python benchmarks/ablation.py [--clips-per-class 12] [--data-seed 7]
        [--seeds 0,1,2] [--fusions early,late,audio,visual] [--ray] [key=value ...]

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

PROBES = {"fused": ("audio", "visual"), "audio": ("audio",), "visual": ("visual",)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--features", help="an existing feature table (default: generate one)")
    ap.add_argument("--clips-per-class", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--degrade-fraction", type=float, default=0.3)
    ap.add_argument("--no-audio-fraction", type=float, default=0.0)
    ap.add_argument("--data-seed", type=int, default=7)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--fusions", default="early,late,audio,visual")
    ap.add_argument("--ray", action="store_true", help="train through Ray Train")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (in-process)")
    ap.add_argument("overrides", nargs="*", help="key=value training config overrides")
    args = ap.parse_args()

    import ray

    from glue.runtime import init_kwargs, quiet_driver

    if args.ray or not args.features:  # extraction and --ray need Ray; fit does not
        ray.init(**init_kwargs(num_cpus=os.cpu_count(), address=None))
        quiet_driver()
    t_start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            features = Path(args.features) if args.features else _make_features(args, tmp)
            probes = _probes(features)
            train = _train_ray if args.ray else _train_in_process
            results: dict[str, list[tuple[float, float]]] = {}
            for fusion in args.fusions.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    cfg = load_config(
                        None,
                        [
                            f"output_dir={tmp / 'runs'}",
                            "train.workers=0",
                            f"model.fusion={fusion}",
                            f"train.seed={seed}",
                            *args.overrides,
                        ],
                    )
                    res = train(cfg, features, tmp, f"{fusion}-seed{seed}", args.threads)
                    results.setdefault(fusion, []).append(
                        (res["accuracy"], res["macro_f1"], *res.get("signatures", (np.nan,) * 2))
                    )
                    print(
                        f"  {fusion:<7} seed {seed}: accuracy {res['accuracy']:.3f} "
                        f"macro-F1 {res['macro_f1']:.3f} (best epoch {res['best_epoch']}, "
                        f"{res['clips']} test clips)",
                        flush=True,
                    )
            _table(results, probes, args)
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
        f"benchmark: {args.clips_per_class} clips/class x {args.seconds:g} s, synth seed "
        f"{args.data_seed}, degraded {args.degrade_fraction:.0%}, no audio "
        f"{args.no_audio_fraction:.0%}; extracted {s.clips_ok} clips in {s.wall_seconds:.0f} s",
        flush=True,
    )
    return tmp / "features"


def _train_in_process(cfg, features: Path, tmp: Path, name: str, threads: int) -> dict:
    """The default model and recipe, trained with ``avarnet.training.fit`` on the feature
    table's train/val splits (model built as the Ray Train loop builds it), best epoch
    on validation, scored on the test split."""
    import torch

    from avarnet import training as T
    from avarnet.models import create_model
    from avarnet.predictor import find_normal_label
    from glue.train import check_training_data, model_kwargs

    torch.set_num_threads(threads)
    facts = check_training_data(features)
    labels = facts.labels
    normal = find_normal_label(labels)
    kwargs = model_kwargs(
        cfg, facts.spec, len(labels), labels.index(normal) if normal else None, facts.multilabel
    )
    recipe = T.Recipe.from_config(cfg.train)
    tables = T.read_split_tables(features, ("train", "val", "test"))
    torch.manual_seed(recipe.seed)
    model = create_model(cfg.model.name, **kwargs)
    fitted = T.fit(
        model, tables["train"], tables["val"], recipe, labels=labels, multilabel=facts.multilabel
    )
    model.load_state_dict(fitted.best.state)
    m = T.evaluate_batches(
        model,
        T.table_batches(tables["test"], recipe.batch_size),
        labels=labels,
        multilabel=facts.multilabel,
        recipe=recipe,
        prefix="test",
    )
    batch, targets = T.collate(tables["test"], labels, facts.multilabel)
    model.eval()
    with torch.inference_mode():
        out = model(batch.audio, batch.visual, batch.mask, batch.has_audio)
    pred = out["clip_logits"].argmax(1).tolist()
    truth = [labels[i] for i in targets.tolist()]
    return {
        "accuracy": m["test_accuracy"],
        "macro_f1": m["test_macro_f1"],
        "best_epoch": fitted.best.epoch,
        "clips": tables["test"].num_rows,
        "signatures": _signature_accuracy([labels[i] for i in pred], truth),
    }


def _signature_accuracy(pred: list[str], truth: list[str]) -> tuple[float, float]:
    """The fraction of clips whose predicted class shows the true class's visual and audio
    signature (:data:`avarnet.data.synthetic.SIGNATURES`): what one modality alone can get
    right (1.0 at best), where it can only guess between the two classes that share it."""
    from avarnet.data.synthetic import SIGNATURES

    if not all(name in SIGNATURES for name in (*pred, *truth)):
        return (np.nan, np.nan)
    return tuple(
        float(np.mean([SIGNATURES[p][k] == SIGNATURES[t][k] for p, t in zip(pred, truth)]))
        for k in (0, 1)
    )


def _train_ray(cfg, features: Path, tmp: Path, name: str, threads: int) -> dict:
    from glue.train import run_training

    res = run_training(
        cfg,
        features,
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        run_name=name,
        register=False,
    )
    return {**res, "clips": res["report"]["clips"]}


def _clip_means(table, modality: str) -> np.ndarray:
    """``(N, D)``: each clip's steps LayerNorm'd (as the fusion does), then averaged."""
    from avarnet.features import table as ft

    rows = []
    for x in ft.nested_to_numpy(table.column(modality)):
        x = np.asarray(x, dtype=np.float64)
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        rows.append(x.mean(0))
    return np.stack(rows)


def _probes(features: Path) -> dict[str, tuple[float, ...]]:
    """Test accuracy, macro-F1 and signature accuracies (:func:`_signature_accuracy`) of a
    logistic regression (C = 1) on clip-mean features,
    fitted on the train split, per entry of :data:`PROBES`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from avarnet import training as T

    tables = T.read_split_tables(features, ("train", "test"))
    y = {s: np.array(t.column("label").to_pylist()) for s, t in tables.items()}
    x = {s: {m: _clip_means(t, m) for m in ("audio", "visual")} for s, t in tables.items()}
    out = {}
    for name, modalities in PROBES.items():
        fused = {s: np.concatenate([x[s][m] for m in modalities], 1) for s in x}
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
        clf.fit(fused["train"], y["train"])
        pred = clf.predict(fused["test"])
        out[name] = (
            float(np.mean(pred == y["test"])),
            float(f1_score(y["test"], pred, average="macro")),
            *_signature_accuracy(list(pred), list(y["test"])),
        )
    return out


def _table(results: dict[str, list[tuple[float, ...]]], probes, args) -> None:
    """``results``: per fusion, one ``(accuracy, macro-F1, visual signature, audio
    signature)`` per seed; ``probes``: the same four per probe."""
    seeds = len(next(iter(results.values())))
    print(
        f"\n| model | test accuracy (mean ± std, {seeds} seeds) | test macro-F1 "
        "| right visual / audio signature |"
    )
    print("|---|---|---|---|")
    means = {}
    for fusion, rs in results.items():
        acc, f1, vsig, asig = np.array(rs, dtype=float).T
        means[fusion] = acc.mean()
        print(
            f"| MTCN {fusion} | {acc.mean():.3f} ± {acc.std():.3f} "
            f"| {f1.mean():.3f} ± {f1.std():.3f} | {vsig.mean():.2f} / {asig.mean():.2f} |"
        )
    for name, (acc, f1, vsig, asig) in probes.items():
        label = "audio ‖ visual" if name == "fused" else f"{name} only"
        print(f"| linear probe, {label} | {acc:.3f} | {f1:.3f} | {vsig:.2f} / {asig:.2f} |")
    if {"early", "audio", "visual"} <= set(means):
        lead = means["early"] - max(means["audio"], means["visual"])
        print(f"\nearly fusion leads the better single modality by {100 * lead:.1f} points")
    if "early" in means:
        gap = means["early"] - probes["fused"][0]
        word = "above" if gap >= 0 else "below"
        print(f"early fusion is {100 * abs(gap):.1f} points {word} the fused linear probe")
    print("trainer:", "Ray Train" if args.ray else "in-process avarnet.training.fit")
    print("overrides:", " ".join(args.overrides) or "(none: the defaults)")


if __name__ == "__main__":
    main()
