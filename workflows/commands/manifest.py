"""``avarnet manifest``: read a dataset folder or CSV into a manifest CSV."""

from __future__ import annotations

import argparse

from workflows.commands._common import SubParsers, emit


def add(sub: SubParsers) -> None:
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

    emit(args, summary, human)
    return 0
