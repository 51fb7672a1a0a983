"""``avarnet predict``: batch scoring of raw footage."""

from __future__ import annotations

import argparse

from glue import console
from glue.errors import CliError
from workflows.commands._common import (
    SubParsers,
    add_placement_args,
    emit,
    flag_overrides,
    load_cfg,
    tracking_uri_for,
)


def add(sub: SubParsers) -> None:
    p = sub.add_parser(
        "predict",
        help="score your own footage in batch: per-segment anomaly scores (Ray Data)",
        description=(
            "Score video files, folders (recursively), manifest CSVs or globs with a model "
            "(default: the registry's champion). Decode tasks -> encoder actors built from the "
            "model's FeatureSpec (GPUs with --gpus-per-worker) -> the model, in batches. "
            "Writes OUT/scores/*.parquet, one JSON per clip (the schema of POST /v1/score), "
            "OUT/events.csv (runs of segments scored >= --threshold), OUT/report.html (a "
            "timeline per clip; open it from the disk) and OUT/errors.parquet. A re-run skips "
            "clips this model version scored. One file is scored in this process, without "
            "Ray, and printed as a text timeline."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders, CSVs, globs")
    p.add_argument(
        "--model",
        default=None,
        help="artifact folder or models:/ URI (default: serve.model_uri, models:/avarnet@champion)",
    )
    p.add_argument("--out", default=None, help="output folder (default: OUTPUT_DIR/predict)")
    p.add_argument("--tracking-uri", help="MLflow store holding the registry")
    p.add_argument("--threshold", type=float, default=0.5, help="event threshold (default 0.5)")
    p.add_argument(
        "--min-gap-s",
        type=float,
        default=0.0,
        help="merge events separated by less than this (seconds)",
    )
    p.add_argument(
        "--frame-scores", action="store_true", help="also one .npy of per-frame scores per clip"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="encoder actors (default features.workers)"
    )
    p.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per encoder actor")
    p.add_argument("--retry-failed", action="store_true", help="retry files that failed before")
    p.add_argument("--batch", action="store_true", help="use Ray even for a single file")
    p.add_argument("--config", help="YAML config file (default: built-in defaults)")
    p.add_argument(
        "--json", action="store_true", help="print a JSON summary (one file: its answer)"
    )
    placement = add_placement_args(p, "decode", "encode")
    p.set_defaults(
        func=_run_predict, log_dir=lambda a: _predict_out(a) / "logs", placement=placement
    )


def _predict_out(args: argparse.Namespace):
    from pathlib import Path

    if args.out:
        return Path(args.out).resolve()
    return (
        Path(
            load_cfg(argparse.Namespace(config=args.config, overrides=[]), []).output_dir
        ).resolve()
        / "predict"
    )


def _run_predict(args: argparse.Namespace) -> int:
    import contextlib

    from glue import tracking
    from glue.runtime import ray_session
    from workflows import predict

    cfg = load_cfg(
        argparse.Namespace(config=args.config, overrides=[]),
        flag_overrides(args, args.placement),
    )
    _check_args(args)
    out = _predict_out(args)
    rows = predict.gather_inputs(args.inputs)
    uri = args.model or cfg.serve.model_uri
    tracking_uri = args.tracking_uri or tracking_uri_for(cfg, cfg.output_dir)
    predictor, model = predict.load_model(uri, tracking_uri, cfg.output_dir)
    if len(rows) == 1 and not args.batch:
        console.say("avarnet: one file: scored in this process, no Ray (--batch for a Ray job)")
        answer = predict.score_one_file(rows[0]["path"], predictor, model)
        emit(args, answer, predict.text_timeline)
        return 0
    plan = predict.plan_predict(rows, out, model, retry_failed=args.retry_failed)
    if not plan.todo:
        console.say(
            f"avarnet: nothing to score: {plan.done} clips already scored by {model.name} "
            f"{model.version} in {out}"
        )
    workers = args.workers or cfg.features.workers
    gpus = cfg.features.gpus_per_worker if args.gpus_per_worker is None else args.gpus_per_worker
    session = ray_session() if plan.todo else contextlib.nullcontext()
    with session, tracking.start_run(tracking_uri, cfg.tracking.experiment, "predict") as run:
        summary = predict.run_predict(
            rows,
            out,
            predictor,
            model,
            threshold=args.threshold,
            min_gap_s=args.min_gap_s,
            frame_scores=args.frame_scores,
            retry_failed=args.retry_failed,
            workers=workers,
            gpus_per_worker=gpus,
            encoder_cpus=cfg.features.encoder_cpus,
            decode_cpus=cfg.features.decode_cpus,
            decode_labels=cfg.features.decode_labels,
            encoder_labels=cfg.features.encoder_labels,
            fit_resources=cfg.features.fit_resources,
            progress=not args.json,
            logger=run,
        )
        result = {**summary.to_dict(), "run_id": run.run_id, "tracking_uri": tracking_uri}
    for e in summary.errors[summary.clips_failed_before :]:
        console.say(f"avarnet: failed: {e['message']}")
    emit(args, result, lambda r: _human(r, model))
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Fail (CliError) on a threshold, gap or output folder that cannot work."""
    from glue.runtime import check_durable_path

    if not 0.0 <= args.threshold <= 1.0:
        raise CliError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.min_gap_s < 0:
        raise CliError(f"--min-gap-s must be >= 0, got {args.min_gap_s}")
    if args.out:
        check_durable_path(args.out, "--out")


def _human(r: dict, model) -> str:
    """The batch result ``r`` for a person: counts, speed, where the outputs are."""
    return (
        f"scored {r['clips_ok']} clips ({r['clips_skipped']} already scored, "
        f"{r['clips_failed']} failed) with {model.name} {model.version} in "
        f"{r['wall_seconds']} s = {r['clip_seconds_per_s']} clip-seconds/s; "
        f"{r['events']} events\n  scores:  {r['scores']}\n  events:  {r['events_csv']}\n"
        f"  report:  {r['report']}\n  MLflow run {r['run_id']} in {r['tracking_uri']}"
    )
