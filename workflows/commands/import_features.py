"""``avarnet import-features``: turn released XD-Violence I3D + VGGish features into a feature table."""

from __future__ import annotations

import argparse

from workflows.commands._common import SubParsers, emit, progress_callback, say_warning


def add(sub: SubParsers) -> None:
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
        progress=None if args.json else progress_callback("import"),
    )
    for prob in summary["problems"]:
        say_warning(f"{prob['file']}: {prob['reason']}")

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

    emit(args, summary, human)
    return 0
