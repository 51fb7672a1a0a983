"""Faults a cluster has: an extraction actor killed mid-run, a pipeline interrupted
between stages. (A training worker killed: tests/workflows/test_train.py; a Serve replica
killed: tests/serve/test_app.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def alive_actor_pids(class_fragment: str) -> list[int]:
    """PIDs of this cluster's live actors whose class name contains ``class_fragment``."""
    import ray
    from ray.util.state import list_actors

    # This session's cluster by address: another Ray on the machine (a second test run, a
    # user's) would make the state API refuse to guess.
    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("state", "=", "ALIVE")],
        limit=1000,
        raise_on_missing_output=False,
    )
    return [a.pid for a in actors if class_fragment in (a.class_name or "") and a.pid]


def test_extraction_survives_a_killed_encoder_actor(ray_session, bench_rows, tiny_spec, tmp_path):
    from avarnet.features import table as ft
    from workflows.extract import run_extract

    out = tmp_path / "features"
    result: dict = {}

    def extract() -> None:
        try:
            result["summary"] = run_extract(
                bench_rows, out, tiny_spec, workers=1, batch_size=1, progress=False
            )
        except BaseException as err:  # reported below
            result["error"] = err

    worker = threading.Thread(target=extract)
    worker.start()
    deadline = time.monotonic() + 120
    pids: list[int] = []
    while not pids and time.monotonic() < deadline and worker.is_alive():
        pids = alive_actor_pids("ChunkEncoder")
        time.sleep(0.2)
    assert pids, "the encoder actor never started"
    assert worker.is_alive(), "extraction finished before the kill: nothing was tested"
    os.kill(pids[0], signal.SIGKILL)  # as soon as it is up: mid-run, with clips in flight
    worker.join(timeout=600)
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert summary.clips_failed == 0, summary.errors
    assert ft.done_video_ids(out) == {r["video_id"] for r in bench_rows}  # every clip written
    table = ft.read_features(out)
    assert len(table) == len(bench_rows)  # and none twice


def _assert_no_noise(stderr: str) -> None:
    for noise in ("Traceback", "core_worker", "Deprecat", "(raylet)", "WARNING"):
        assert noise not in stderr, stderr[-3000:]


def _pipeline(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "workflows.pipeline",
        "--config",
        str(ROOT / "workflows" / "configs" / "demo.yaml"),
        "--stages",
        "data,extract,train",
        f"output_dir={tmp_path / 'run'}",
        "synth.clips_per_class=3",
        "synth.seconds=2",
        "train.epochs=2",
        "train.workers=0",  # trains in the driver: the stages' resumption is what is tested
        *extra,
    ]


def test_interrupted_pipeline_resumes_without_redoing_finished_stages(tmp_path):
    """Ctrl-C once extraction has finished; the re-run skips data and extract."""
    # Its own local Ray, as a user's first run.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        _pipeline(tmp_path),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    marker = tmp_path / "run" / "stages" / "extract.json"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate(timeout=60)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "run the same command again to resume" in err
    # An operator reads the stage lines and bars; Ray's own output is in the log file.
    assert "[data] running ..." in err and "[extract] running ..." in err
    _assert_no_noise(err)
    stages = tmp_path / "run" / "stages"
    assert not (stages / "train.json").exists()
    extracted_at = marker.stat().st_mtime_ns
    parts = sorted(p.name for p in (tmp_path / "run" / "features").glob("*.parquet"))

    res = subprocess.run(
        [*_pipeline(tmp_path), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)  # exactly one JSON document on stdout
    _assert_no_noise(res.stderr)
    assert Path(summary["log"]).is_file()
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status == {"data": "skipped", "extract": "skipped", "train": "ran"}
    assert marker.stat().st_mtime_ns == extracted_at  # not redone
    assert sorted(p.name for p in (tmp_path / "run" / "features").glob("*.parquet")) == parts
    # Nothing left to do: said at once, no Ray started.
    t0 = time.monotonic()
    idle = subprocess.run(
        _pipeline(tmp_path), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert idle.returncode == 0, idle.stderr[-3000:]
    assert "nothing to do: every stage is up to date" in idle.stderr
    assert "ran" not in {line.split()[1] for line in idle.stdout.splitlines()[1:4]}
    print(f"re-run with nothing to do: {time.monotonic() - t0:.1f} s")
    # Nothing half-written is left beside the outputs.
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]
    assert leftovers == []

    from mlflow.tracking import MlflowClient

    client = MlflowClient(summary["tracking_uri"])
    exp = client.get_experiment_by_name("avarnet")
    parents = client.search_runs([exp.experiment_id], "tags.`avarnet.stage` = 'pipeline'")
    # interrupted, resumed, and the re-run that had nothing to do
    assert sorted(r.info.status for r in parents) == ["FINISHED", "FINISHED", "KILLED"]
