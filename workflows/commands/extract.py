"""``avarnet extract``: the Ray Data feature extraction job."""

from __future__ import annotations

import argparse

from glue import console
from workflows.commands._common import (
    SubParsers,
    add_config_args,
    add_placement_args,
    beside,
    emit,
    flag_overrides,
    load_cfg,
    say_warning,
    tracking_uri_for,
)


def add(sub: SubParsers) -> None:
    p = sub.add_parser(
        "extract",
        help="extract Wav2Vec2 + MobileViT features to Parquet (Ray Data)",
        description=(
            "Decode every clip of a dataset (CPU tasks) and encode it with Wav2Vec2 (audio) and "
            "MobileViT (frames) in an actor pool, one GPU per actor when --gpus-per-worker is "
            "set. Writes OUT/part-*.parquet (one row per clip: T x D features per modality), "
            "OUT/feature_spec.json and OUT/errors.parquet. A re-run skips finished clips; a "
            "clip that fails is listed in the error table and the job goes on. Presets: "
            "'paper' (pretrained facebook/wav2vec2-base + mobilevit_s; needs the model hub or "
            "local copies), 'tiny' (small random-init backbones: tests and the demo), "
            "'full-random' (full-size architectures, random weights: benchmarks)."
        ),
    )
    p.add_argument("--data", required=True, help="dataset folder or manifest CSV")
    p.add_argument("--out", required=True, help="feature table folder")
    p.add_argument("--preset", default=None, choices=["tiny", "paper", "full-random"])
    p.add_argument("--workers", type=int, default=None, help="encoder actors (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per encoder actor")
    p.add_argument("--format", default="auto", choices=["auto", "folders", "csv", "xd-violence"])
    p.add_argument("--annotations", help="XD-Violence test annotation file")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="retry clips that failed before even when their file has not changed",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    placement = add_placement_args(p, "decode", "encode")
    add_config_args(p)
    p.set_defaults(func=_run_extract, log_dir=lambda a: beside(a.out), placement=placement)


def _run_extract(args: argparse.Namespace) -> int:
    import contextlib
    from pathlib import Path

    from avarnet.data.manifest import read_manifest
    from glue import tracking
    from glue.runtime import check_durable_path, check_job_input, ray_session
    from workflows.extract import extract_with_config, plan_extract, spec_from_config

    extra = flag_overrides(
        args,
        (
            ("preset", "features.preset"),
            ("workers", "features.workers"),
            ("gpus_per_worker", "features.gpus_per_worker"),
            *args.placement,
        ),
    )
    cfg = load_cfg(args, extra)
    check_durable_path(args.out, "--out")
    check_job_input(args.data, "--data")
    out = Path(args.out).resolve()
    manifest = read_manifest(args.data, format=args.format, annotations=args.annotations)
    for prob in manifest.problems:
        say_warning(f"{prob['file']}: {prob['reason']}")
    spec = spec_from_config(cfg)  # a bad preset or backbone fails here, before Ray starts
    plan = plan_extract(manifest.rows, out, spec, retry_failed=args.retry_failed)
    if not plan.todo:  # nothing to do: no Ray, no actors
        _say_nothing_to_do(plan, out)
    uri = tracking_uri_for(cfg, out.parent)
    session = ray_session() if plan.todo else contextlib.nullcontext()
    with session, tracking.start_run(uri, cfg.tracking.experiment, "extract") as run:
        run.log_config(cfg)
        summary = extract_with_config(
            cfg,
            manifest.rows,
            out,
            progress=not args.json,
            logger=run,
            spec=spec,
            retry_failed=args.retry_failed,
        )
        result = {**summary.to_dict(), "run_id": run.run_id, "tracking_uri": uri}
    for e in summary.errors[summary.clips_failed_before :]:
        console.say(f"avarnet: failed: {e['message']}")
    emit(args, result, _human)
    return 0


def _say_nothing_to_do(plan, out) -> None:
    """Say that every clip is already in the table at ``out`` (or failed before)."""
    console.say(
        f"avarnet: nothing to extract: {plan.done} clips already in {out}"
        + (
            f", {len(plan.failed_before)} failed before and unchanged (--retry-failed retries them)"
            if plan.failed_before
            else ""
        )
    )


def _human(r: dict) -> str:
    """The result ``r`` for a person: counts, speed, where the features and errors are."""
    from pathlib import Path

    return (
        f"extracted {r['clips_ok']} clips ({r['clips_skipped']} already done, "
        f"{r['clips_failed']} failed) in {r['wall_seconds']} s "
        f"= {r['clip_seconds_per_s']} clip-seconds/s\n  features: {r['out_dir']}\n"
        f"  errors:   {Path(r['out_dir']) / 'errors.parquet'}\n"
        f"  MLflow run {r['run_id']} in {r['tracking_uri']}"
    )
