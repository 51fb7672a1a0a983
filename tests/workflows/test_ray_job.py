"""The pipeline as a Ray job on a real multi-node cluster (the session's ``ray_cluster``:
`ray start --head` + two worker nodes, token authentication on), exactly as the README
tells a user to submit it, with decoding pinned to one node's label and the compute
(encoders, training, Serve replicas) to the other's."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests

from workflows.local_cluster import BIN
from workflows.pipeline import STAGES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The README's job command for the demo config (`ray job submit` arguments).
DEMO_JOB = (
    "--working-dir",
    ".",
    "--",
    "python",
    "-m",
    "workflows.pipeline",
    "--config",
    "workflows/configs/demo.yaml",
)


@pytest.fixture
def head_node(ray_cluster):
    """The session's cluster, through its head node's job API."""
    return ray_cluster


# Where the pipeline's work runs (the cluster's labels, tests/conftest.py).
PLACED = (
    "features.decode_labels=avarnet.io/pool=decode",
    "features.encoder_labels=avarnet.io/pool=compute",
    "train.worker_labels=avarnet.io/pool=compute",
    "serve.encoder_labels=avarnet.io/pool=compute",
    "serve.classifier_labels=avarnet.io/pool=compute",
    # A Tune trial trains in its own process, placed by train.worker_labels; half a CPU,
    # so that it fits on the one-CPU compute node beside what else runs there.
    "tune.cpus_per_trial=0.5",
)


def _job_id(res) -> str:
    return re.search(r"raysubmit_\w+", res.stdout + res.stderr).group(0)


def test_relative_output_dir_is_refused_inside_a_job(head_node):
    """Inside a job a relative output_dir points into the job's temporary copy of the
    working directory: refused in one line that says what to pass instead."""
    res = head_node.ray("job", "submit", *DEMO_JOB, cwd=ROOT, timeout=300)
    assert res.returncode != 0
    assert head_node.job_status(_job_id(res)) == "FAILED"
    logs = res.stdout + res.stderr
    assert "avarnet: error: output_dir='runs/demo' is relative" in logs, logs[-3000:]
    assert "absolute path" in logs and "Traceback" not in logs


def test_batch_scoring_as_a_ray_job(head_node, bench_rows, tiny_spec, tmp_path, new_store):
    """`avarnet predict` submitted as the README says: a folder of footage scored on the
    cluster, outputs on (here: local, absolute) shared storage."""
    import shutil

    from avarnet.predictor import seeded_artifact
    from workflows.predict import read_scores

    footage = tmp_path / "footage" / "cam"
    footage.mkdir(parents=True)
    for r in bench_rows[:3]:
        shutil.copy(r["path"], footage / Path(r["path"]).name)
    labels = sorted({r["label"] for r in bench_rows})
    model = seeded_artifact(tmp_path / "model", "avarnet_tiny", tiny_spec, labels)
    out = tmp_path / "scored"
    res = head_node.ray(
        "job",
        "submit",
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "workflows.predict",
        str(footage.parent),
        "--model",
        str(model),
        "--out",
        str(out),
        "--tracking-uri",
        f"{new_store(tmp_path)}",
        cwd=ROOT,
        timeout=600,
    )
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-2000:])
    assert head_node.job_status(_job_id(res)) == "SUCCEEDED"
    assert len(read_scores(out)) == 3
    assert (out / "events.csv").exists() and (out / "report.html").exists()
    assert "scored 3 clips" in res.stdout and "Traceback" not in res.stdout + res.stderr


def test_pipeline_as_a_ray_job(head_node, tmp_path, new_store):
    """`ray job stop` during extraction, then the same job submitted again: the first
    parent run ends KILLED, the second resumes from the stage markers and finishes."""
    env, address = head_node.env, head_node.address
    out = tmp_path / "run"
    uri = new_store(tmp_path)
    # Without the token the job API refuses.
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    no_token["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-such-token")
    refused = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", address],
        env=no_token,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert refused.returncode != 0

    job = [
        *DEMO_JOB,
        f"output_dir={out}",
        f"tracking.tracking_uri={uri}",
        "synth.clips_per_class=3",
        "synth.seconds=2",
        "train.epochs=2",
        "tune.trials=1",
        "tune.grace_period=1",
        f"serve.port={head_node.serve_port}",
        "serve.encoder_cpus=0.5",
        *PLACED,
    ]
    # 1. Stopped with `ray job stop` (SIGTERM to the driver) during extraction.
    first = head_node.ray("job", "submit", "--no-wait", *job, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    first_id = _job_id(first)
    deadline = time.monotonic() + 300
    while not (out / "stages" / "data.json").exists():
        assert head_node.job_status(first_id) in ("PENDING", "RUNNING"), head_node.job_logs(
            first_id
        )[-3000:]
        assert time.monotonic() < deadline, "the data stage did not finish in 300 s"
        time.sleep(0.5)
    stopped = head_node.ray("job", "stop", first_id, timeout=120)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert head_node.job_status(first_id) == "STOPPED"
    # The stop lands during extraction, or later on a busy machine (`ray job stop` takes
    # its time to start): the driver names the stages it finished, and those are marked.
    marked = {p.stem: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    logs = head_node.job_logs(first_id)
    said = re.search(r"avarnet: terminated \(SIGTERM\) after ([a-z, ]+);", logs)
    assert said, logs[-3000:]
    assert said.group(1).split(", ") == [s for s in STAGES if s in marked], (said, marked)
    assert "data" in marked and "serve" not in marked

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("avarnet")
    (killed,) = [
        r
        for r in client.search_runs([exp.experiment_id], max_results=200)
        if r.data.tags.get("avarnet.stage") == "pipeline"
    ]
    assert killed.info.status == "KILLED"

    # 2. The same job again: resumes after the data stage and finishes.
    t0 = time.monotonic()
    submit = head_node.ray("job", "submit", *job, cwd=ROOT)
    wall = time.monotonic() - t0
    assert submit.returncode == 0, head_node.job_logs(_job_id(submit))[-5000:]
    assert head_node.job_status(_job_id(submit)) == "SUCCEEDED"
    print(f"ray job (resumed after data): {wall:.0f} s")
    # The job's log holds the operator's lines (stages, bars, summary), not Ray's.
    logs = head_node.job_logs(_job_id(submit))
    assert "[serve] running ..." in logs and "log:" in logs
    for stage in marked:  # finished before the stop: skipped, not redone
        assert f"[{stage}] up to date, skipped" in logs, logs[-3000:]
        assert (out / "stages" / f"{stage}.json").stat().st_mtime_ns == marked[stage]
    for noise in ("Traceback", "core_worker", "Deprecat", "(raylet)"):
        assert noise not in logs, logs[-3000:]
    # Where the work ran, from Ray's own records of the job.
    job = _job_id(submit)
    placed = {
        "decode tasks": head_node.placement("tasks", "decode_row", job),
        "encoder actors": head_node.placement("actors", "ChunkEncoder", job),
        "training workers": head_node.placement("actors", "RayTrainWorker", job),
        "Tune trials": head_node.placement("actors", "ImplicitFunc", job),
    }
    print(f"placement (records per node): {placed}")
    assert set(placed["decode tasks"]) == {"cpu1"}, placed
    assert set(placed["encoder actors"]) == {"cpu2"}, placed
    assert set(placed["training workers"]) == {"cpu2"}, placed
    assert set(placed["Tune trials"]) == {"cpu2"}, placed
    replicas = {
        kind: head_node.placement("actors", f"ServeReplica:avarnet:{kind}")
        for kind in ("Encoder", "Classifier")
    }
    print(f"Serve replicas per node: {replicas}")
    assert set(replicas["Encoder"]) == set(replicas["Classifier"]) == {"cpu2"}, replicas

    runs = client.search_runs([exp.experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("avarnet.stage") == "pipeline"]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"]
    stages = {r.data.tags.get("avarnet.stage") for r in runs}
    assert {"data", "extract", "train", "tune", "serve"} <= stages
    assert client.get_model_version_by_alias("avarnet", "champion") is not None
    markers = {p.stem for p in (out / "stages").glob("*.json")}
    assert markers == {"data", "extract", "train", "tune", "serve"}
    serve_marker = json.loads((out / "stages" / "serve.json").read_text())
    assert serve_marker["label"] and serve_marker["url"].endswith(str(head_node.serve_port))

    # The service the job deployed stays up on the cluster after the job, with an HTTP
    # proxy on every node: a clip is scored through the decode node's own proxy, which
    # holds no Encoder or Classifier replica.
    r = requests.get(f"{serve_marker['url']}/v1/health", timeout=30)
    assert r.status_code == 200 and r.json()["model"]["name"] == "avarnet"
    other = f"http://127.0.0.1:{head_node.node('cpu1').serve_port}"
    _wait_healthy(other)
    with open(serve_marker["clip"], "rb") as f:
        via_cpu1 = requests.post(f"{other}/v1/score", files={"file": f}, timeout=120)
    assert via_cpu1.status_code == 200, via_cpu1.text
    assert via_cpu1.json()["label"] == serve_marker["label"]
    proxies = head_node.placement("actors", "ProxyActor")
    assert {"head", "cpu1", "cpu2"} <= set(proxies), proxies

    # ... until an operator removes it, as the README says. (Deploying it again from
    # serve/config.yaml with `serve deploy`: tests/serve/test_limits.py, on the local Ray.)
    _serve_cli(["shutdown", "--address", address, "--yes"], env)


def _wait_healthy(url: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/v1/health", timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise AssertionError(f"{url}/v1/health did not answer 200 in {timeout:.0f} s")


def _serve_cli(args: list[str], env: dict) -> None:
    res = subprocess.run(
        [str(BIN / "serve"), *args], env=env, capture_output=True, text=True, timeout=180, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-2000:]
