"""Feature extraction with real Ray Data on real MP4 files (tiny preset)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from avarnet.data.decode import probe
from avarnet.data.synthetic import write_av_clip
from avarnet.features import table as ft
from avarnet.features.backbones import build_feature_spec
from avarnet.features.spec import FeatureSpec, FeatureSpecMismatch


def test_table_has_documented_schema_and_shapes(tiny_features, bench_rows, tiny_spec):
    fs = ft.read_features(tiny_features)
    assert sorted(fs.video_id) == sorted(r["video_id"] for r in bench_rows)
    assert set(fs.split) == {"train", "val", "test"}
    by_id = {r["video_id"]: r for r in bench_rows}
    for i, vid in enumerate(fs.video_id):
        a, v = fs.audio[i], fs.visual[i]
        # 3 s clips on a 1 s grid: T = 3 for both modalities.
        assert a.shape == (3, tiny_spec.audio_dim) and a.dtype == np.float32
        assert v.shape == (3, tiny_spec.visual_dim) and v.dtype == np.float32
        assert np.isfinite(a).all() and np.isfinite(v).all()
        assert fs.label[i] == by_id[vid]["label"]
        assert fs.segment_gt[i].shape == (3,)
    schema = pq.read_schema(ft.part_files(tiny_features)[0])
    for col in ("video_id", "path", "label", "split", "audio", "visual", "has_audio", "decoder"):
        assert col in schema.names


def test_feature_spec_round_trips(tiny_features, tiny_spec):
    on_disk = json.loads((tiny_features / ft.SPEC_FILE).read_text())
    assert FeatureSpec.from_dict(on_disk) == tiny_spec
    assert ft.read_spec(tiny_features) == tiny_spec
    # ... and the same spec travels inside every Parquet part's metadata.
    meta = pq.read_schema(ft.part_files(tiny_features)[0]).metadata
    assert FeatureSpec.from_json(meta[b"avarnet.feature_spec"].decode()) == tiny_spec


def test_clips_without_audio_are_flagged_with_zero_audio(tiny_features, bench_rows):
    fs = ft.read_features(tiny_features)
    silent = {r["video_id"] for r in bench_rows if not probe(r["path"]).has_audio}
    assert silent, "the fixture is generated with some clips lacking audio"
    for i, vid in enumerate(fs.video_id):
        assert bool(fs.has_audio[i]) == (vid not in silent)
        if vid in silent:
            assert not fs.audio[i].any()
            assert fs.visual[i].any()


def test_rerun_skips_finished_clips(ray_session, tiny_features, bench_rows, tiny_spec):
    from workflows.extract import run_extract

    parts_before = sorted(p.name for p in ft.part_files(tiny_features))
    summary = run_extract(bench_rows, tiny_features, tiny_spec, workers=1, progress=False)
    assert summary.clips_skipped == len(bench_rows)
    assert summary.clips_ok == 0 and summary.clips_failed == 0
    assert sorted(p.name for p in ft.part_files(tiny_features)) == parts_before


def test_bad_clips_go_to_error_table_and_the_rest_is_written(
    ray_session, bench_rows, tiny_spec, tmp_path
):
    from workflows.extract import run_extract

    good = bench_rows[:3]
    corrupt = tmp_path / "corrupt.mp4"
    data = Path(good[0]["path"]).read_bytes()
    corrupt.write_bytes(data[: len(data) // 3])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    short = tmp_path / "short.mp4"  # 0.4 s: shorter than one segment
    frames = np.full((5, 64, 64, 3), 128, np.uint8)
    tone = (0.2 * np.sin(np.arange(int(5 / 12 * 16000)) / 5)).astype(np.float32)[None]
    write_av_clip(short, frames, 12, tone, 16000)
    # A WebM written to a pipe carries no duration: decord refuses it, PyAV reads it.
    webm = tmp_path / "piped.webm"
    with webm.open("wb") as f:
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi"]
            + ["-i", "testsrc2=size=96x64:rate=12:duration=2", "-c:v", "libvpx", "-f", "webm"]
            + ["pipe:1"],
            stdout=f,
            check=True,
        )
    extra = [
        {**good[0], "video_id": "corrupt", "path": str(corrupt)},
        {**good[0], "video_id": "text", "path": str(text)},
        {**good[0], "video_id": "missing", "path": str(tmp_path / "gone.mp4")},
        {**good[0], "video_id": "short", "path": str(short), "gt_intervals": []},
        {**good[0], "video_id": "webm", "path": str(webm), "gt_intervals": []},
    ]
    out = tmp_path / "features"
    summary = run_extract(good + extra, out, tiny_spec, workers=1, progress=False)
    assert summary.clips_ok == 5 and summary.clips_failed == 3
    errors = ft.read_errors(out)
    assert sorted(e["video_id"] for e in errors) == ["corrupt", "missing", "text"]
    assert {e["stage"] for e in errors} == {"decode"}
    assert all(e["path"] in e["message"] for e in errors)
    fs = ft.read_features(out)
    assert sorted(fs.video_id) == sorted([r["video_id"] for r in good] + ["short", "webm"])
    short_i = fs.video_id.index("short")
    assert fs.audio[short_i].shape[0] == fs.visual[short_i].shape[0] == 1
    # The table records which decoder read each clip.
    decoders = {
        r["video_id"]: r["decoder"]
        for part in ft.part_files(out)
        for r in pq.read_table(part, columns=["video_id", "decoder"]).to_pylist()
    }
    assert decoders == {
        **{r["video_id"]: "decord" for r in good},
        "short": "decord",
        "webm": "pyav",
    }
    assert fs.visual[fs.video_id.index("webm")].shape[0] == 2
    # A re-run does not retry failed clips whose file has not changed (they stay in the
    # error table); one whose file changed is retried; nothing is duplicated.
    again = run_extract(good + extra, out, tiny_spec, workers=1, progress=False)
    assert again.clips_skipped == 5 and again.clips_failed == 3 and again.clips_ok == 0
    assert again.clips_failed_before == 3
    text.write_text("still not a video, but another file\n")
    again = run_extract(good + extra, out, tiny_spec, workers=1, progress=False)
    assert again.clips_failed == 3 and again.clips_failed_before == 2 and again.clips_ok == 0
    assert sorted(e["video_id"] for e in ft.read_errors(out)) == ["corrupt", "missing", "text"]
    retried = run_extract(
        good + extra, out, tiny_spec, workers=1, progress=False, retry_failed=True
    )
    assert retried.clips_failed == 3 and retried.clips_failed_before == 0
    assert len(ft.read_features(out)) == 5


def test_spec_mismatch_is_refused_and_nothing_overwritten(ray_session, tiny_features, bench_rows):
    from workflows.extract import run_extract

    other = build_feature_spec("tiny", frames_per_segment=2)
    before = {p.name: p.stat().st_mtime_ns for p in tiny_features.iterdir()}
    with pytest.raises(FeatureSpecMismatch, match="another FeatureSpec"):
        run_extract(bench_rows, tiny_features, other, workers=1, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in tiny_features.iterdir()} == before


def test_cli_extract_json_and_mlflow_run(ray_session, bench_rows, tmp_path, capfd, new_store):
    from mlflow.tracking import MlflowClient

    from avarnet.data.manifest import write_manifest_csv
    from workflows.cli import main

    data = tmp_path / "data"
    write_manifest_csv(bench_rows[:3], data / "manifest.csv")
    uri = new_store(tmp_path)
    out = tmp_path / "features"
    code = main(
        [
            "extract",
            "--data",
            str(data / "manifest.csv"),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--json",
            f"tracking.tracking_uri={uri}",
        ]
    )
    assert code == 0
    result = json.loads(capfd.readouterr().out)  # one document, nothing else on stdout
    for key in ("clips_ok", "clips_failed", "clip_seconds", "wall_seconds", "clip_seconds_per_s"):
        assert key in result
    assert result["clips_ok"] == 3 and result["clips_failed"] == 0
    assert result["clip_seconds"] == pytest.approx(9.0, abs=0.2)
    run = MlflowClient(uri).get_run(result["run_id"])
    assert run.data.metrics["clips_ok"] == 3
    assert run.data.params["feature_spec.audio_dim"] == "64"
    assert run.data.params["feature_spec.visual_backbone"] == "mobilevit_xxs"
    names = {a.path for a in MlflowClient(uri).list_artifacts(result["run_id"])}
    assert ft.SPEC_FILE in names and ft.ERRORS_FILE in names
    # Nothing left to do: said at once, without starting Ray Data or any actor.
    args = ["extract", "--data", str(data / "manifest.csv"), "--out", str(out), "--preset", "tiny"]
    assert main([*args, "--json", f"tracking.tracking_uri={uri}"]) == 0
    captured = capfd.readouterr()
    again = json.loads(captured.out)
    assert again["clips_skipped"] == 3 and again["clips_ok"] == 0
    assert f"nothing to extract: 3 clips already in {out}" in captured.err


def test_cli_extract_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from workflows.cli import main

    code = main(["extract", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avarnet: error:") and "\n" not in err


def test_an_encoder_pool_that_would_starve_decoding_is_refused(
    ray_session,
    bench_dir,
    tmp_path,
    capfd,
    new_store,
):
    """Two encoder actors of one CPU on this 2-CPU Ray leave no CPU for the decode tasks
    that feed them: the job would wait forever with nothing pending. Refused in one line,
    before anything is decoded, with what to change."""
    from workflows.cli import main

    out = tmp_path / "features"
    args = ["extract", "--data", str(bench_dir), "--out", str(out), "--workers", "2"]
    code = main([*args, f"tracking.tracking_uri={new_store(tmp_path)}"])
    err = capfd.readouterr().err
    assert code == 2, err
    assert "avarnet: error: features.workers=2 encoder actors would leave no CPU" in err
    assert "lower features.workers" in err and "Traceback" not in err
    assert not list(out.glob("part-*.parquet"))
