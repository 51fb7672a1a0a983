"""``avarnet evaluate``: a model on a feature table's test split."""

from __future__ import annotations

import argparse

from glue.errors import CliError
from workflows.commands._common import SubParsers, beside, emit


def add(sub: SubParsers) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a model on a feature table",
        description=(
            "Score a split of a feature table with a model (an artifact folder or a registry "
            "URI such as models:/avarnet/3 or models:/avarnet@champion) and print accuracy, "
            "macro-F1, per-class precision/recall/F1 and anomaly AP. Writes report.json and "
            "confusion_matrix.png to --out."
        ),
    )
    p.add_argument("--model", required=True, help="artifact folder or models:/ URI")
    p.add_argument("--features", required=True, help="feature table folder")
    p.add_argument(
        "--split", default="test", help="split to evaluate (default test; 'all' for every clip)"
    )
    p.add_argument("--out", help="folder for report.json and confusion_matrix.png")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ URIs")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=_run_evaluate, log_dir=lambda a: beside(a.features))


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from avarnet.evaluation import evaluate, format_report
    from avarnet.features.table import read_features
    from glue.tracking import load_predictor, write_json

    features = Path(args.features).resolve()
    predictor = load_predictor(args.model, args.tracking_uri, features.parent)
    fs = read_features(features, splits=None if args.split == "all" else [args.split])
    if len(fs) == 0:
        raise CliError(f"{features}: no clips in split {args.split!r}")
    predictor.spec.check_compatible(fs.spec)
    out = Path(args.out).resolve() if args.out else features.parent / "eval"
    report = evaluate(predictor, fs, out_dir=out)
    write_json(report, out / "report.json")
    result = {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "clips": report["clips"],
        "model_uri": args.model,
        "report": str(out / "report.json"),
        "confusion_matrix_png": report["confusion_matrix_png"],
        **{
            k: report[k]
            for k in (
                "xd_ap",
                "xd_average_precision",
                "segment_ap_auc",
                "segment_average_precision",
            )
            if k in report
        },
    }
    emit(args, result, lambda r: format_report(report) + f"\nreport: {r['report']}")
    return 0
