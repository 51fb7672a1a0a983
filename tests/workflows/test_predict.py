"""Batch scoring (`avarnet predict`) with real Ray Data over a folder of real clips."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avarnet.features import table as ft

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(bench_rows, tiny_spec, tmp_path_factory) -> Path:
    """An artifact folder: avarnet_tiny with seeded weights for the benchmark's classes."""
    from avarnet.predictor import seeded_artifact

    labels = sorted({r["label"] for r in bench_rows})
    return Path(
        seeded_artifact(tmp_path_factory.mktemp("model"), "avarnet_tiny", tiny_spec, labels)
    )


@pytest.fixture(scope="module")
def footage(bench_rows, tmp_path_factory) -> dict:
    """A folder as a user has one: clips at two depths (one without audio), a damaged
    file, a text file named .mp4 and a file that is not a video at all."""
    from avarnet.data.decode import probe

    root = tmp_path_factory.mktemp("footage")
    silent = next(r for r in bench_rows if not probe(r["path"]).has_audio)
    loud = [r for r in bench_rows if r is not silent][:4]
    (root / "cam1").mkdir()
    (root / "cam2" / "night").mkdir(parents=True)
    shutil.copy(loud[0]["path"], root / "cam1" / "a.mp4")
    shutil.copy(loud[1]["path"], root / "cam1" / "b.mp4")
    shutil.copy(loud[2]["path"], root / "cam2" / "night" / "c.mp4")
    shutil.copy(silent["path"], root / "cam2" / "silent.mp4")
    data = Path(loud[3]["path"]).read_bytes()
    (root / "cam2" / "broken.mp4").write_bytes(data[: len(data) // 3])
    (root / "cam1" / "notes.mp4").write_text("not a video\n")
    (root / "readme.txt").write_text("ignored: not a video extension\n")
    return {
        "root": root,
        "ok": {"cam1/a", "cam1/b", "cam2/night/c", "cam2/silent"},
        "bad": {"cam2/broken", "cam1/notes"},
    }


def _predict(args: list[str], capfd) -> dict:
    from workflows.cli import main

    capfd.readouterr()  # what the test itself printed before
    assert main(["predict", *args, "--json"]) == 0
    return json.loads(capfd.readouterr().out)


def _score_schema() -> dict:
    from serve.app import api

    return api.openapi()


def test_a_folder_is_scored_resumably(
    ray_session, footage, model_dir, tmp_path, capfd, request, new_store
):
    import jsonschema

    from avarnet.scoring import find_events
    from workflows.predict import read_scores

    out = tmp_path / "out"
    uri = new_store(tmp_path)
    args = [str(footage["root"]), "--model", str(model_dir), "--out", str(out)]
    args += ["--tracking-uri", uri, "--frame-scores", "--threshold", "0.5"]
    result = _predict(args, capfd)
    assert result["clips_ok"] == 4 and result["clips_failed"] == 2
    rows = read_scores(out)
    assert {r["video_id"] for r in rows} == footage["ok"]
    errors = ft.read_errors(out)
    assert {e["video_id"] for e in errors} == footage["bad"]
    assert all("Traceback" not in e["message"] for e in errors)
    version = result["model"]["version"]
    assert version.startswith("local-")
    # One JSON per clip, in the schema of POST /v1/score; the Parquet row says the same.
    openapi = _score_schema()
    schema = {
        **openapi["components"]["schemas"]["ScoreResponse"],
        "components": openapi["components"],
    }
    folder = out / "json" / f"avarnet_tiny-{version}"
    by_id = {r["video_id"]: r for r in rows}
    events = []
    for vid in footage["ok"]:
        answer = json.loads((folder / f"{vid}.json").read_text())
        jsonschema.validate(answer, schema)
        assert answer["label"] == by_id[vid]["label"]
        assert len(answer["segments"]) == 3 and answer["duration_s"] == pytest.approx(3, abs=0.05)
        np.testing.assert_allclose(
            [s["anomaly_score"] for s in answer["segments"]],
            [s["anomaly_score"] for s in by_id[vid]["segments"]],
        )
        assert answer["has_audio"] == (vid != "cam2/silent")
        frames = np.load(out / "frames" / f"avarnet_tiny-{version}" / f"{vid}.npy")
        assert frames.dtype == np.float32 and len(frames) >= 36  # 3 s at 12 fps
        seg_scores = np.array([s["anomaly_score"] for s in answer["segments"]])
        assert np.isclose(frames[:, None], seg_scores[None], atol=1e-6).any(1).all()
        events += find_events(vid, answer["path"], answer["segments"], 0.5)
    with (out / "events.csv").open() as f:
        listed = list(csv.DictReader(f))
    assert len(listed) == len(events) == result["events"]
    assert {(e["video_id"], float(e["start_s"])) for e in listed} == {
        (e.video_id, round(e.start_s, 3)) for e in events
    }
    # The MLflow run holds the counts and the report.
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(result["run_id"])
    assert run.data.metrics["clips_ok"] == 4
    names = {a.path for a in MlflowClient(uri).list_artifacts(result["run_id"])}
    assert {"report.html", "events.csv", "errors.parquet"} <= names
    # A re-run: nothing to score (no Ray work), the same rows.
    again = _predict(args, capfd)
    assert again["clips_ok"] == 0 and again["clips_skipped"] == 4
    assert again["clips_failed"] == 2 and again["clips_failed_before"] == 2
    assert len(read_scores(out)) == 4
    # Last: without Chromium (and outside make test) only this check is skipped.
    _check_report(
        out / "report.html",
        request.getfixturevalue("chromium"),
        n_clips=4,
        n_events=len(events),
        tmp_path=tmp_path,
    )


def _check_report(path: Path, chromium, *, n_clips: int, n_events: int, tmp_path: Path) -> None:
    """report.html from the disk in headless Chromium: one timeline per clip."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(path.as_uri())
            page.wait_for_selector("section.clip svg.timeline rect.segment")
            clips = page.locator("section.clip").count()
            timelines = page.locator("section.clip svg.timeline").count()
            events = page.locator("svg.timeline rect.event").count()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    print(f"report screenshot: {tmp_path / 'report.png'}")
    assert clips == timelines == n_clips and events == n_events


def test_one_file_is_scored_without_ray(footage, model_dir, tmp_path, new_store, capfd):
    """One file: scored in the process, no Ray (a fresh process shows it starts none); the
    human form and a bad file through the same CLI in this process."""
    from workflows.cli import main

    clip = footage["root"] / "cam1" / "a.mp4"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = ["predict", str(clip), "--model", str(model_dir), "--tracking-uri", new_store(tmp_path)]
    res = subprocess.run(
        [sys.executable, "-m", "workflows.cli", *args, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)
    assert len(answer["segments"]) == 3 and answer["decoder"] == "decord"
    assert "no Ray" in res.stderr
    capfd.readouterr()
    assert main(args) == 0
    human = capfd.readouterr().out
    assert f"label: {answer['label']}" in human
    assert human.count(" s") >= 1 and "top:" in human
    bad = [*args[:1], str(footage["root"] / "cam1" / "notes.mp4"), *args[2:]]
    assert main(bad) == 2
    err = capfd.readouterr().err
    assert "not a video file" in err and "Traceback" not in err


def test_a_model_trained_on_imported_features_is_refused_in_one_line(tmp_path, capsys):
    """A model whose features came from external backbones (I3D + VGGish, imported with
    `avarnet import-features`) cannot score video files: exit 2 and one line naming why,
    before any file is read (nothing tries to load "external:vggish" from a hub)."""
    import torch

    from avarnet.features.imported import imported_spec
    from avarnet.models import create_model
    from avarnet.predictor import save_artifact
    from workflows.cli import main

    spec = imported_spec()
    kwargs = {"audio_dim": spec.audio_dim, "visual_dim": spec.visual_dim, "num_classes": 2}
    torch.manual_seed(0)
    model = create_model("avarnet_tiny", **kwargs)
    folder = save_artifact(
        tmp_path / "model",
        model_name="avarnet_tiny",
        model_kwargs=model.config["kwargs"],
        state_dict=model.state_dict(),
        labels=["normal", "violent"],
        feature_spec=spec,
    )
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not read")
    code = main(["predict", str(clip), "--model", str(folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "cannot score video files" in err and "external backbones" in err
    assert "Traceback" not in err
