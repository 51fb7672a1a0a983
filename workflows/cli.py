"""The ``avarnet`` command line: the product's front door.

Every verb has ``--help``; verbs that produce a result accept ``--json`` and then print
exactly one JSON object on stdout (human-readable progress goes to stderr). Bad input
gives one clear line on stderr and exit status 2, never a traceback.

Heavy imports (torch, ray, mlflow) happen inside the verbs, so ``avarnet --help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from workflows import console
from workflows.errors import (
    EXIT_BAD_INPUT,
    CliError,
    handle_sigterm,
    interrupt_name,
    interrupt_status,
    known_errors,
)

__all__ = ["EXIT_BAD_INPUT", "CliError", "build_parser", "main"]


def _emit(args: argparse.Namespace, result: dict, human: Callable[[dict], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result, default=str), file=console.out(), flush=True)
    else:
        print(human(result), file=console.out(), flush=True)


def _err(msg: str) -> None:
    console.say(f"avarnet: error: {msg}")


def _warn(msg: str) -> None:
    console.say(f"avarnet: warning: {msg}")


# --------------------------------------------------------------------------- synth
def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write the generated audio-visual benchmark (real MP4 files)",
        description=(
            "Write the built-in benchmark: real MP4 clips (H.264 video + AAC audio) for the ten "
            "VAAR class names, in DIR/<Class>/*.mp4, plus DIR/manifest.csv. Each visual "
            "signature is shared by two classes and each audio signature by two others, so "
            "only fusion identifies the class. Deterministic for a seed. It is a test bed, "
            "not a claim about real-world accuracy. --layout xd-violence writes the same kind "
            "of clips in the XD-Violence layout instead (DIR/train, DIR/test, names with "
            "label codes, DIR/annotations.txt for the test videos)."
        ),
    )
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument(
        "--layout",
        default="vaar",
        choices=["vaar", "xd-violence"],
        help=(
            "vaar (default): DIR/<Class>/*.mp4 + manifest.csv; xd-violence: DIR/train and "
            "DIR/test with XD-Violence names (label codes, '#', multi-label), video-level "
            "labels for training and DIR/annotations.txt (frame intervals) for test"
        ),
    )
    p.add_argument(
        "--clips-per-class",
        type=int,
        default=8,
        help="clips per class (default 8); xd-violence: violent training videos per class",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="clip length in seconds (default 4; xd-violence: the mean length, default 12)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--fps", type=int, default=None, help="video frame rate (default 12; xd-violence 16)"
    )
    p.add_argument(
        "--degrade-fraction",
        type=float,
        default=None,
        help="fraction of clips darkened, occluded or noisy (default 0.3; not xd-violence)",
    )
    p.add_argument(
        "--no-audio-fraction",
        type=float,
        default=0.0,
        help="fraction of clips written without an audio track (default 0)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from avarnet.data.manifest import read_manifest
    from avarnet.data.synthetic import generate_benchmark

    if args.layout == "xd-violence":
        return _run_synth_xd(args)
    seconds = 4.0 if args.seconds is None else args.seconds
    if args.clips_per_class < 1 or seconds <= 0:
        raise CliError("--clips-per-class must be >= 1 and --seconds > 0")
    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    generate_benchmark(
        out,
        clips_per_class=args.clips_per_class,
        seconds=seconds,
        seed=args.seed,
        fps=12 if args.fps is None else args.fps,
        degrade_fraction=0.3 if args.degrade_fraction is None else args.degrade_fraction,
        no_audio_fraction=args.no_audio_fraction,
        progress=None if args.json else _progress("synth"),
    )
    summary = read_manifest(out / "manifest.csv").summary()
    result = {
        "out": str(out),
        "manifest": str(out / "manifest.csv"),
        "seconds": round(time.perf_counter() - t0, 2),
        **summary,
    }
    _emit(
        args,
        result,
        lambda r: (
            f"wrote {r['clips']} clips in {r['seconds']} s\n"
            f"  clips:    {r['out']}\n  manifest: {r['manifest']}\n"
            f"  splits:   {r['split_counts']}"
        ),
    )
    return 0


def _run_synth_xd(args: argparse.Namespace) -> int:
    """``avarnet synth --layout xd-violence``: the generated benchmark in the XD-Violence
    layout (:mod:`avarnet.data.synthetic_xd`), read back with the XD-Violence reader."""
    import time
    from pathlib import Path

    from avarnet.data.manifest import read_manifest
    from avarnet.data.synthetic_xd import ANNOTATIONS_FILE, generate_xd_benchmark, xd_split_counts

    seconds = 12.0 if args.seconds is None else args.seconds
    if args.clips_per_class < 1 or seconds <= 0:
        raise CliError("--clips-per-class must be >= 1 and --seconds > 0")
    if args.degrade_fraction or args.no_audio_fraction:
        raise CliError(
            "--degrade-fraction and --no-audio-fraction are not available with "
            "--layout xd-violence (every video is clean and has audio)"
        )
    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    generate_xd_benchmark(
        out,
        clips_per_class=args.clips_per_class,
        seconds=seconds,
        seed=args.seed,
        fps=16 if args.fps is None else args.fps,
        progress=None if args.json else _progress("synth"),
    )
    manifest = read_manifest(out, format="xd-violence", annotations=out / ANNOTATIONS_FILE)
    result = {
        "out": str(out),
        "annotations": str(out / ANNOTATIONS_FILE),
        "seconds": round(time.perf_counter() - t0, 2),
        **manifest.summary(),
        "violent_normal": xd_split_counts(manifest.rows),
    }

    def human(r: dict) -> str:
        counts = ", ".join(
            f"{split} {c['violent']} violent + {c['normal']} normal"
            for split, c in r["violent_normal"].items()
        )
        return (
            f"wrote {r['clips']} videos (XD-Violence layout) in {r['seconds']} s\n"
            f"  videos:      {r['out']}/train, {r['out']}/test\n"
            f"  annotations: {r['annotations']} ({r['annotated_clips']} test videos with "
            f"frame labels)\n  splits:      {counts}"
        )

    _emit(args, result, human)
    return 0


def _progress(desc: str):
    """A progress callback ``cb(done, total)`` drawing a bar on stderr."""
    bar: dict = {}

    def cb(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = console.progress_bar(total, desc, "clip")
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()

    return cb


# ------------------------------------------------------------------------ manifest
def _add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "manifest",
        help="validate a dataset and write its manifest",
        description=(
            "Read a dataset in one of its real layouts and write a manifest CSV "
            "(video_id, path, label, labels, split, gt_intervals). Layouts: 'folders' (VAAR "
            "style, a folder per class, optional train/val/test folders above them), 'csv' "
            "(path,label[,split]), 'xd-violence' (labels coded in the file names, e.g. "
            "'..._label_B2-G-0.mp4'; test annotations via --annotations). Clips without a "
            "split get a deterministic stratified 70/15/15 split. Problems (unparseable names, "
            "annotations without a video) are listed, not fatal."
        ),
    )
    p.add_argument("path", help="dataset folder or manifest CSV")
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "folders", "csv", "xd-violence"],
        help="dataset layout (default: detect)",
    )
    p.add_argument("--annotations", help="XD-Violence test annotation file (name s1 e1 s2 e2 ...)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--out", help="write the manifest CSV here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=_run_manifest)


def _run_manifest(args: argparse.Namespace) -> int:
    from avarnet.data.manifest import read_manifest, write_manifest_csv

    result = read_manifest(
        args.path, format=args.format, annotations=args.annotations, seed=args.seed
    )
    summary = result.summary()
    if args.out:
        write_manifest_csv(result.rows, args.out)
        summary["out"] = args.out
    summary["format"] = result.format

    def human(s: dict) -> str:
        lines = [f"{s['clips']} clips ({s['format']}), {s['annotated_clips']} with frame labels"]
        lines.append("labels: " + ", ".join(f"{k} {v}" for k, v in s["label_counts"].items()))
        lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in s["split_counts"].items()))
        for prob in s["problems"]:
            lines.append(f"problem: {prob['file']}: {prob['reason']}")
        if s.get("out"):
            lines.append(f"manifest written to {s['out']}")
        return "\n".join(lines)

    _emit(args, summary, human)
    return 0


# ----------------------------------------------------------------- import-features
def _add_import_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-features",
        help="turn released features (XD-Violence I3D + VGGish .npy) into a feature table",
        description=(
            "Import released features as the project's feature table (Parquet + a "
            "FeatureSpec naming the external backbones), so train, tune and evaluate run on "
            "them. Format xd-i3d-vggish: DIR holds <name>__0.npy .. <name>__4.npy (five I3D "
            "crops, T x 1024 per 16-frame snippet) and <name>__vggish.npy (T_a x 128) anywhere "
            "below it; the split comes from train/test folder names, or from the official list "
            "files (--lists), which then also give the videos and their order. Audio is paired "
            "by name; when it is one snippet shorter the last RGB snippet is dropped, more is "
            "an error. Such a model scores feature tables, not video files (Serve refuses it)."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="folder holding the released .npy files")
    p.add_argument("--format", default="xd-i3d-vggish", choices=["xd-i3d-vggish"])
    p.add_argument("--annotations", help="XD-Violence test annotation file (name s1 e1 ...)")
    p.add_argument("--out", required=True, help="feature table folder to write")
    p.add_argument(
        "--lists",
        nargs="+",
        metavar="LIST",
        help="official list files (rgb.list rgb_test.list audio.list audio_test.list)",
    )
    p.add_argument(
        "--crops",
        default="mean",
        choices=["mean", "each"],
        help=(
            "mean (default): one row per video, the five crops averaged; each: training rows "
            "per crop (HL-Net), validation and test rows still averaged"
        ),
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="training videos moved to a validation split (default 0: the field's split; "
        "Tune needs one, e.g. 0.1)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--force", action="store_true", help="replace an existing table at --out")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=_run_import_features)


def _run_import_features(args: argparse.Namespace) -> int:
    from avarnet.features.imported import import_xd_features

    summary = import_xd_features(
        args.dir,
        args.out,
        annotations=args.annotations,
        lists=args.lists,
        crops=args.crops,
        val_fraction=args.val_fraction,
        seed=args.seed,
        force=args.force,
        progress=None if args.json else _progress("import"),
    )
    for prob in summary["problems"]:
        _warn(f"{prob['file']}: {prob['reason']}")

    def human(r: dict) -> str:
        counts = ", ".join(
            f"{split} {c['violent']} violent + {c['normal']} normal"
            for split, c in sorted(r["violent_normal"].items())
        )
        return (
            f"imported {r['videos']} videos as {r['rows']} rows (crops: {r['crops']}), "
            f"{r['snippets']} snippets; {r['dropped_last_rgb']} videos lost their last RGB "
            f"snippet to pair with the audio\n  videos:   {counts}\n"
            f"  annotated test videos: {r['annotated']}\n  features: {r['out']}"
        )

    _emit(args, summary, human)
    return 0


# ------------------------------------------------------------------------- inspect
def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a clip's metadata and its segment grid",
        description="Probe one video file: duration, frame rate, frames, audio track, segments.",
    )
    p.add_argument("file", help="a video file")
    p.add_argument(
        "--segment-seconds", type=float, default=1.0, help="segment length (default 1.0)"
    )
    p.add_argument(
        "--segment-frames",
        type=int,
        default=None,
        help="segments of N frames instead of seconds (XD-Violence: 16)",
    )
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from avarnet.data.decode import DecodeOptions, probe

    opts = DecodeOptions(segment_seconds=args.segment_seconds, segment_frames=args.segment_frames)
    info = probe(args.file)
    result = {
        "path": info.path,
        "duration_s": round(info.duration_s, 4),
        "fps": round(info.fps, 4),
        "n_frames": info.n_frames,
        "width": info.width,
        "height": info.height,
        "has_audio": info.has_audio,
        "audio_sample_rate": info.audio_sample_rate,
        "audio_channels": info.audio_channels,
        "n_segments": info.n_segments(opts),
        "decoder": info.decoder,  # decord, or PyAV for what decord cannot read correctly
    }
    _emit(args, result, lambda r: "\n".join(f"{k:18s} {v}" for k, v in r.items()))
    return 0


# ------------------------------------------------------------------------- config
def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (default: built-in defaults)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.lr=3e-4 model.num_stages=2",
    )


def _load_cfg(args: argparse.Namespace, extra: list[str]):
    from avarnet.config import load_config

    return load_config(args.config, list(extra) + list(args.overrides or []))


def _flag_overrides(args: argparse.Namespace, pairs: tuple[tuple[str, str], ...]) -> list[str]:
    """``key=value`` overrides for the command-line flags that were given."""
    return [
        f"{key}={getattr(args, flag)}" for flag, key in pairs if getattr(args, flag) is not None
    ]


def _beside(path: str):
    """Logs of a verb that writes ``path``: ``<parent of path>/logs``."""
    from pathlib import Path

    return Path(path).resolve().parent / "logs"


def _config_log_dir(args: argparse.Namespace):
    from pathlib import Path

    return Path(_load_cfg(args, []).output_dir).resolve() / "logs"


def _tracking_uri(cfg, root) -> str:
    from workflows.tracking import resolve_tracking_uri

    return resolve_tracking_uri(cfg.tracking, root)


# ------------------------------------------------------------------------- extract
def _add_extract(sub: argparse._SubParsersAction) -> None:
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
    _add_config_args(p)
    p.set_defaults(func=_run_extract, log_dir=lambda a: _beside(a.out))


def _run_extract(args: argparse.Namespace) -> int:
    import contextlib
    from pathlib import Path

    from avarnet.data.manifest import read_manifest
    from workflows import tracking
    from workflows.extract import extract_with_config, plan_extract, spec_from_config
    from workflows.runtime import check_durable_path, ray_session

    extra = _flag_overrides(
        args,
        (
            ("preset", "features.preset"),
            ("workers", "features.workers"),
            ("gpus_per_worker", "features.gpus_per_worker"),
        ),
    )
    cfg = _load_cfg(args, extra)
    check_durable_path(args.out, "--out")
    out = Path(args.out).resolve()
    manifest = read_manifest(args.data, format=args.format, annotations=args.annotations)
    for prob in manifest.problems:
        _warn(f"{prob['file']}: {prob['reason']}")
    spec = spec_from_config(cfg)  # a bad preset or backbone fails here, before Ray starts
    plan = plan_extract(manifest.rows, out, spec, retry_failed=args.retry_failed)
    if not plan.todo:  # nothing to do: no Ray, no actors
        console.say(
            f"avarnet: nothing to extract: {plan.done} clips already in {out}"
            + (
                f", {len(plan.failed_before)} failed before and unchanged (--retry-failed "
                "retries them)"
                if plan.failed_before
                else ""
            )
        )
    uri = _tracking_uri(cfg, out.parent)
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
    _emit(
        args,
        result,
        lambda r: (
            f"extracted {r['clips_ok']} clips ({r['clips_skipped']} already done, "
            f"{r['clips_failed']} failed) in {r['wall_seconds']} s "
            f"= {r['clip_seconds_per_s']} clip-seconds/s\n  features: {r['out_dir']}\n"
            f"  errors:   {Path(r['out_dir']) / 'errors.parquet'}\n"
            f"  MLflow run {r['run_id']} in {r['tracking_uri']}"
        ),
    )
    return 0


# --------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
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
    _add_config_args(p)
    p.set_defaults(func=_run_train, log_dir=lambda a: _beside(a.features))


def _run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from avarnet.evaluation import format_report
    from workflows.runtime import check_durable_path, ray_session
    from workflows.train import check_training_data, run_training_seeds

    check_durable_path(args.features, "--features")
    features = Path(args.features).resolve()
    extra = [f"output_dir={features.parent}"] + _flag_overrides(
        args,
        (
            ("model", "model.name"),
            ("fusion", "model.fusion"),
            ("epochs", "train.epochs"),
            ("workers", "train.workers"),
            ("seed", "train.seed"),
            ("seeds", "train.seeds"),
        ),
    )
    cfg = _load_cfg(args, extra)
    uri = _tracking_uri(cfg, Path(cfg.output_dir))
    facts = check_training_data(features)  # bad data fails here, before Ray starts
    with ray_session():
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

    _emit(args, result, human)
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


# ---------------------------------------------------------------------------- tune
def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="search hyperparameters with Ray Tune; the best model becomes the champion",
        description=(
            "Search the training hyperparameters (learning rate, stages, layers, filters, "
            "dropout, smoothing weight, modality dropout, fusion mode; tune.space in the "
            "config) with Ray Tune: Optuna (TPE) proposes, ASHA stops weak trials on "
            "validation macro-F1. Every trial trains with the same trainer as `avarnet "
            "train`. The best trial's model is evaluated on the test split and registered in "
            "MLflow as a new version of 'avarnet' with the alias 'champion'. Interrupted "
            "(Ctrl-C)? Run the same command again: the search resumes where it stopped."
        ),
    )
    p.add_argument("--features", required=True, help="feature table folder (avarnet extract)")
    p.add_argument("--trials", type=int, help="number of trials (default 8)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default 1)")
    p.add_argument("--time-budget-s", type=float, help="stop starting trials after this long")
    p.add_argument("--epochs", type=int, help="epochs per trial (ASHA's max_t)")
    p.add_argument("--name", default="search", help="search name; the same name resumes it")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    _add_config_args(p)
    p.set_defaults(func=_run_tune, log_dir=lambda a: _beside(a.features))


def _run_tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tune.search import SearchInterrupted, check_search_settings, run_search
    from workflows.runtime import check_durable_path, ray_session
    from workflows.train import check_training_data

    check_durable_path(args.features, "--features")
    features = Path(args.features).resolve()
    extra = [f"output_dir={features.parent}"] + _flag_overrides(
        args,
        (
            ("trials", "tune.trials"),
            ("max_concurrent", "tune.max_concurrent"),
            ("time_budget_s", "tune.time_budget_s"),
            ("epochs", "train.epochs"),
        ),
    )
    cfg = _load_cfg(args, extra)
    check_search_settings(cfg)  # settings that cannot work fail here, before Ray starts
    uri = _tracking_uri(cfg, Path(cfg.output_dir))
    check_training_data(features)  # bad data fails here, before Ray starts
    try:
        with ray_session():
            res = run_search(
                cfg, features, tracking_uri=uri, name=args.name, progress=not args.json
            )
    except SearchInterrupted as err:
        _err(str(err))
        return 130
    keys = ("best_config", "best_macro_f1", "model_uri", "trials_completed", "trials_stopped_early")
    result = {k: res[k] for k in keys}
    result.update(
        {
            "accuracy": res["accuracy"],
            "macro_f1": res["macro_f1"],
            "trials_failed": res["trials_failed"],
            "run_id": res["run_id"],
            "wall_seconds": round(res["wall_seconds"], 1),
            "resumed": res["resumed"],
            "default": res["default"],
            "champion_is_default": res["champion_is_default"],
            "selected_on": res["selected_on"],
        }
    )

    def human(r: dict) -> str:
        lines = [f"{'trial':<12}{'outcome':<15}{'epochs':>7}{'val F1':>8}  values"]
        for t in res["trials"]:
            vals = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in t.items()
                if "." in k
            )
            f1 = t["val_macro_f1"]
            lines.append(
                f"{t['trial_id']:<12}{t['outcome']:<15}{t['epochs']:>7}"
                f"{'' if f1 is None else f'{f1:.3f}':>8}  {vals}"
            )
        split = res["eval_split"]
        if r["default"]:
            d = r["default"]
            lines.append(
                f"{'default':<12}{'baseline':<15}{'':>7}{d['val_macro_f1']:>8.3f}  "
                f"(the configuration as given; {split} accuracy {d['accuracy']:.3f})"
            )
        who = "the default" if r["champion_is_default"] else "the best searched trial"
        lines.append(
            f"champion: {who}, selected on validation (val macro-F1 {r['best_macro_f1']:.3f}); "
            f"{split} accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}; {r['model_uri']}"
        )
        lines.append(f"MLflow run {r['run_id']}: mlflow ui --backend-store-uri {uri}")
        return "\n".join(lines)

    _emit(args, result, human)
    return 0


# ------------------------------------------------------------------------ evaluate
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_run_evaluate, log_dir=lambda a: _beside(a.features))


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from avarnet.evaluation import evaluate, format_report
    from avarnet.features.table import read_features
    from workflows.tracking import load_predictor, write_json

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
    _emit(args, result, lambda r: format_report(report) + f"\nreport: {r['report']}")
    return 0


# ------------------------------------------------------------------------- predict
def _add_predict(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_run_predict, log_dir=lambda a: _predict_out(a) / "logs")


def _predict_out(args: argparse.Namespace):
    from pathlib import Path

    if args.out:
        return Path(args.out).resolve()
    return (
        Path(
            _load_cfg(argparse.Namespace(config=args.config, overrides=[]), []).output_dir
        ).resolve()
        / "predict"
    )


def _run_predict(args: argparse.Namespace) -> int:
    import contextlib

    from workflows import predict, tracking
    from workflows.runtime import check_durable_path, ray_session

    cfg = _load_cfg(argparse.Namespace(config=args.config, overrides=[]), [])
    if not 0.0 <= args.threshold <= 1.0:
        raise CliError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.min_gap_s < 0:
        raise CliError(f"--min-gap-s must be >= 0, got {args.min_gap_s}")
    if args.out:
        check_durable_path(args.out, "--out")
    out = _predict_out(args)
    rows = predict.gather_inputs(args.inputs)
    uri = args.model or cfg.serve.model_uri
    tracking_uri = args.tracking_uri or _tracking_uri(cfg, cfg.output_dir)
    predictor, model = predict.load_model(uri, tracking_uri, cfg.output_dir)
    if len(rows) == 1 and not args.batch:
        console.say("avarnet: one file: scored in this process, no Ray (--batch for a Ray job)")
        answer = predict.score_one_file(rows[0]["path"], predictor, model)
        _emit(args, answer, predict.text_timeline)
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
            # as the model's features were extracted (it sets Wav2Vec2's audio context)
            chunk_segments=int(
                predictor.meta.get("config", {}).get("features", {}).get("chunk_segments", 32)
            ),
            progress=not args.json,
            logger=run,
        )
        result = {**summary.to_dict(), "run_id": run.run_id, "tracking_uri": tracking_uri}
    for e in summary.errors[summary.clips_failed_before :]:
        console.say(f"avarnet: failed: {e['message']}")
    _emit(
        args,
        result,
        lambda r: (
            f"scored {r['clips_ok']} clips ({r['clips_skipped']} already scored, "
            f"{r['clips_failed']} failed) with {model.name} {model.version} in "
            f"{r['wall_seconds']} s = {r['clip_seconds_per_s']} clip-seconds/s; "
            f"{r['events']} events\n  scores:  {r['scores']}\n  events:  {r['events_csv']}\n"
            f"  report:  {r['report']}\n  MLflow run {r['run_id']} in {r['tracking_uri']}"
        ),
    )
    return 0


# ------------------------------------------------------------------------- serve
def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="score clips online: deploy the model with Ray Serve (HTTP API + web page)",
        description=(
            "Deploy a model (default: the registry's champion, models:/avarnet@champion) "
            "with Ray Serve: an autoscaled encoder deployment (decode + Wav2Vec2 + MobileViT, "
            "built from the FeatureSpec saved with the model), the MTCN classifier and an "
            "HTTP API: POST /v1/score, GET /v1/health, GET /v1/model, the OpenAPI schema at "
            "/docs and a web page at /. Uses the Ray cluster in RAY_ADDRESS, or starts a "
            "local Ray. Runs until Ctrl-C, then shuts the service down."
        ),
    )
    p.add_argument("--model", help="registry URI or artifact folder (default: serve.model_uri)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the project's store)")
    p.add_argument("--max-upload-mb", type=float, help="larger uploads get 413 (default 200)")
    p.add_argument("--encoder-max-replicas", type=int, help="autoscaling ceiling (default 2)")
    p.add_argument("--gpus-per-encoder", type=float, help="GPUs per encoder replica (default 0)")
    _add_config_args(p)
    p.set_defaults(func=_run_serve, log_dir=_config_log_dir)


def _run_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from serve.deploy import app_args, deploy, shutdown
    from workflows.runtime import ray_session

    cfg = _load_cfg(
        args,
        _flag_overrides(
            args,
            (
                ("model", "serve.model_uri"),
                ("host", "serve.host"),
                ("port", "serve.port"),
                ("max_upload_mb", "serve.max_upload_mb"),
                ("encoder_max_replicas", "serve.encoder_max_replicas"),
                ("gpus_per_encoder", "serve.encoder_gpus"),
            ),
        ),
    )
    build_args = app_args(cfg, args.tracking_uri)
    stop = threading.Event()
    state = {"serving": False}

    def on_signal(signum, frame):
        # While serving: the first Ctrl-C (or SIGTERM) stops waiting and shuts down.
        # While starting, or a second Ctrl-C during the shutdown: interrupt.
        if state["serving"] and not stop.is_set():
            stop.set()
        else:
            raise KeyboardInterrupt

    with ray_session():
        # After ray.init, which installs a SIGTERM handler of its own.
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            url = deploy(build_args, host=cfg.serve.host, port=cfg.serve.port)
            state["serving"] = True
            say = console.out()
            print(
                f"avarnet: serving {cfg.serve.model_uri} at {url}/ (API docs: {url}/docs)", file=say
            )
            print("avarnet: press Ctrl-C to stop", file=say, flush=True)
            while not stop.wait(1.0):
                pass
        finally:
            console.say("avarnet: shutting the service down")
            shutdown()
    return 0


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a video clip with a running service (avarnet serve)",
        description=(
            "Upload FILE to a running scoring service (POST /v1/score) and print the "
            "predicted class, the top probabilities and the per-segment anomaly timeline."
        ),
    )
    p.add_argument("file", help="video file to score")
    p.add_argument(
        "--url", default="http://127.0.0.1:8000", help="service URL (default %(default)s)"
    )
    p.add_argument("--timeout-s", type=float, default=300.0, help="request timeout (default 300)")
    p.add_argument("--json", action="store_true", help="print the service's JSON answer")
    p.set_defaults(func=_run_score)


def format_score(r: dict) -> str:
    top = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:3]
    lines = [
        f"label: {r['label']}   (model {r['model']['name']} v{r['model']['version']}, "
        f"{r['duration_s']:.1f} s, audio: {'yes' if r['has_audio'] else 'none'}, "
        f"{r['timings_ms']['total']:.0f} ms)",
        "top:   " + ", ".join(f"{k} {v:.3f}" for k, v in top),
        "anomaly timeline (per segment):",
    ]
    blocks = " ▁▂▃▄▅▆▇█"
    lines.append(
        "  "
        + "".join(blocks[min(8, int(s["anomaly_score"] * 8.999))] for s in r["segments"])
        + f"  max {max((s['anomaly_score'] for s in r['segments']), default=0):.3f}"
    )
    return "\n".join(lines)


def _run_score(args: argparse.Namespace) -> int:
    from serve.client import ScoreError, score_file

    try:
        result = score_file(args.url, args.file, timeout_s=args.timeout_s)
    except ScoreError as err:
        raise CliError(str(err)) from None
    _emit(args, result, format_score)
    return 0


# ------------------------------------------------------------------------- pipeline
def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    from workflows import pipeline

    p = sub.add_parser(
        "pipeline",
        help="the whole workflow: data -> extract -> train -> tune -> serve",
        description=pipeline.DESCRIPTION,
    )
    pipeline.add_arguments(p)
    p.set_defaults(func=pipeline.run_from_args)


# ------------------------------------------------------------------------- main
VERBS = [
    _add_synth,
    _add_manifest,
    _add_import_features,
    _add_inspect,
    _add_extract,
    _add_train,
    _add_tune,
    _add_evaluate,
    _add_predict,
    _add_serve,
    _add_score,
    _add_pipeline,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avarnet",
        description=(
            "Audio-visual anomaly recognition (AVAR-Net: Wav2Vec2 + MobileViT, early fusion, "
            "multi-stage TCN) as a distributed workflow on Ray."
        ),
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for add in VERBS:
        add(sub)
    for verb in sub.choices.values():
        console.add_verbose_flag(verb)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handle_sigterm()
    verbose = getattr(args, "verbose", False)
    log_dir = getattr(args, "log_dir", None)
    try:
        if log_dir is None:
            return int(args.func(args) or 0)
        with console.capture(log_dir(args), args.verb, verbose=verbose):
            return int(args.func(args) or 0)
    except known_errors() as err:
        _err(str(err))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:
        _err(interrupt_name(err) + console.log_hint())
        return interrupt_status(err)
    except Exception as err:
        if verbose:
            raise
        return console.report_failure(err)


if __name__ == "__main__":
    sys.exit(main())
