"""`avarnet serve` (workflows/commands/serve.py) as an operator runs it: its own local Ray
in a subprocess, until Ctrl-C; `avarnet score` against it and against the closed port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve_cli(model: dict, port: int, out: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """`avarnet serve` of ``model`` at ``port`` in a subprocess, once it says it serves
    (its "serving ... at URL" and "press Ctrl-C" lines): the process and what it printed."""
    cmd = [
        sys.executable,
        "-m",
        "workflows.cli",
        "serve",
        "--model",
        "models:/avarnet@champion",
        "--tracking-uri",
        model["tracking_uri"],
        "--port",
        str(port),
        f"output_dir={out}",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    ready = ""
    while time.monotonic() < deadline and proc.poll() is None and "Ctrl-C" not in ready:
        ready += proc.stdout.readline()
    return proc, ready


def ctrl_c(proc: subprocess.Popen) -> str:
    """Ctrl-C to the process; its standard error once it has exited."""
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=120)[1]


@pytest.fixture(scope="module")
def registered_model(tiny_spec, bench_rows, tmp_path_factory) -> dict:
    """``models:/avarnet@champion`` (seeded tiny weights) in a fresh sqlite store."""
    from avarnet.predictor import seeded_artifact
    from glue import tracking

    root = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    labels = sorted({r["label"] for r in bench_rows})
    artifact = seeded_artifact(root / "artifact", "avarnet_tiny", tiny_spec, labels)
    run = tracking.open_run(uri, "avarnet", "serve-cli-test")
    model_uri = tracking.register_model(run, artifact, "avarnet", alias="champion")
    run.end()
    return {"tracking_uri": uri, "model_uri": model_uri}


def test_serve_cli_runs_until_ctrl_c_and_shuts_down(registered_model, bench_rows, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("avarnet-*"))
    proc, ready = start_serve_cli(registered_model, port, tmp_path, env)
    url = f"http://127.0.0.1:{port}"
    try:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        clip = bench_rows[0]["path"]
        score = subprocess.run(
            [sys.executable, "-m", "workflows.cli", "score", clip, "--url", url, "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert score.returncode == 0, score.stderr
        assert (
            json.loads(score.stdout)["model"]["version"]
            == registered_model["model_uri"].rsplit("/", 1)[1]
        )
    finally:
        err = ctrl_c(proc)
    assert proc.returncode == 0, err[-3000:]
    assert f"serving models:/avarnet@champion at {url}/" in ready
    assert "shutting the service down" in err
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/v1/health", timeout=5)
    # Nothing left in the temporary directory (uploads, folders).
    assert set(tmp.glob("avarnet-*")) <= before
    # Scoring against the closed port: one line in plain words, exit status 1 or 2.
    gone = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "score", bench_rows[0]["path"], "--url", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gone.returncode != 0 and "nothing answers there" in gone.stderr
    assert "Max retries" not in gone.stderr and "Traceback" not in gone.stderr


def test_serve_cli_on_a_running_serve_removes_only_its_own_application(
    ray_session, registered_model, bench_rows, tmp_path
):
    """On a Ray where Serve already runs another application (a cluster's service),
    `avarnet serve` deploys beside it at Serve's address and, at Ctrl-C, removes only
    its own application: Serve and the other application keep answering."""
    from ray import serve

    from serve.deploy import controller_options

    port = free_port()
    serve.start(
        http_options={"host": "127.0.0.1", "port": port}, controller_options=controller_options()
    )

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    def other(request) -> str:
        return "the other application"

    try:
        serve.run(other.bind(), name="other", route_prefix="/other")
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
        proc, _ = start_serve_cli(registered_model, port, tmp_path, env)
        try:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            with open(bench_rows[0]["path"], "rb") as f:
                scored = requests.post(f"{url}/v1/score", files={"file": f}, timeout=120)
            assert scored.status_code == 200, scored.text
            assert sorted(serve.status().applications) == ["avarnet", "other"]
        finally:
            err = ctrl_c(proc)
        assert proc.returncode == 0, err[-3000:]
        assert "removing the Serve application 'avarnet'" in err
        assert "shutting the service down" not in err
        assert list(serve.status().applications) == ["other"]
        assert requests.get(f"{url}/other", timeout=10).text == "the other application"
        # The proxy learns of the removal from the controller a moment later.
        deadline = time.monotonic() + 60
        while (health := requests.get(f"{url}/v1/health", timeout=10)).status_code != 404:
            assert time.monotonic() < deadline, (health.status_code, health.text[:300])
            time.sleep(0.5)
    finally:
        serve.shutdown()
