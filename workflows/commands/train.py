"""``avarnet train``: fit the fusion + MTCN classifier with Ray Train (one seed or several)."""

from __future__ import annotations

import argparse

from workflows.commands._common import (
    SubParsers,
    add_config_args,
    add_placement_args,
    beside,
    emit,
    feature_table_config,
)


def add(sub: SubParsers) -> None:
    p = sub.add_parser(
        "train",
        help="train AVAR-Net (early fusion + MTCN) with Ray Train",
        description=(
            "Train the fusion + multi-stage TCN classifier on a feature table with Ray Train "
            "(DDP with --workers > 1), keep the best epoch by validation macro-F1, evaluate "
            "it on the test split, log everything to MLflow and register the model as a new "
            "version of 'avarnet'. Outputs go beside the feature table (its parent folder) "
            "unless output_dir=... is given."
        ),
    )
    p.add_argument("--features", required=True, help="feature table folder (avarnet extract)")
    p.add_argument("--model", help="registered model name (avarnet_tiny, avarnet_base)")
    p.add_argument("--fusion", choices=["early", "late", "audio", "visual"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP when > 1)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--seeds",
        help="comma-separated seeds (e.g. 0,1,2): one model each, every metric as mean ± std, "
        "the best on validation registered",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    placement = add_placement_args(p, "train")
    add_config_args(p)
    p.set_defaults(func=_run_train, log_dir=lambda a: beside(a.features), placement=placement)


def _run_train(args: argparse.Namespace) -> int:

    import contextlib

    from avarnet.evaluation import format_report
    from glue.runtime import ray_session
    from glue.train import check_training_data, run_training_seeds, trains_without_ray

    features, cfg, uri = feature_table_config(
        args,
        (
            ("model", "model.name"),
            ("fusion", "model.fusion"),
            ("epochs", "train.epochs"),
            ("workers", "train.workers"),
            ("seed", "train.seed"),
            ("seeds", "train.seeds"),
            *args.placement,
        ),
    )
    facts = check_training_data(features)  # bad data fails here, before Ray starts
    with contextlib.nullcontext() if trains_without_ray(cfg, features) else ray_session():
        res = run_training_seeds(
            cfg, features, tracking_uri=uri, facts=facts, progress=not args.json
        )
    result = {k: v for k, v in res.items() if k != "report"}

    def human(r: dict) -> str:
        text = format_report(res["report"])
        if r.get("per_seed"):
            text = f"seed {r['selected_seed']} (selected on validation):\n{text}\n\n"
            text += format_seeds(r)
        return (
            text + f"\nmodel {r['model_uri']} (artifact {r['artifact_dir']})\n"
            f"MLflow run {r['run_id']}: mlflow ui --backend-store-uri {r['tracking_uri']}"
        )

    emit(args, result, human)
    return 0


def format_seeds(r: dict) -> str:
    """Per-seed metrics and their mean ± std (sample std over the seeds)."""
    lines = [f"{'seed':>6}{'test acc':>10}{'macro-F1':>10}{'val F1':>8}"]
    for row in r["per_seed"]:
        lines.append(
            f"{row['seed']:>6}{row['accuracy']:>10.3f}{row['macro_f1']:>10.3f}"
            f"{row['best_val_macro_f1']:>8.3f}"
            + ("  <- registered (best on validation)" if row["seed"] == r["selected_seed"] else "")
        )
    for key, stats in r["summary"].items():
        lines.append(
            f"{key}: {stats['mean']:.4f} ± {stats['std']:.4f} over {len(r['seeds'])} seeds"
        )
    return "\n".join(lines)
