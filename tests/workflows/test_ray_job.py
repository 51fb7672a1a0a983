"""The pipeline as a Ray job against a real head node (`ray start --head`, token
authentication on), exactly as the README tells a user to submit it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def head_node():
    """A Ray head node of our own (its own ports, temp dir and token); stopped by stopping
    the `ray start --block` process we started, never with a machine-wide `ray stop`."""
    gcs, dash, agent, agent_grpc, metrics, rt_env, client, serve_port = _free_ports(8)
    temp_dir = tempfile.mkdtemp(prefix="avr-")  # short: Ray's socket paths have a limit
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    # Its processes get RAY_ADDRESS: with two Ray instances on one machine (this test's
    # session has one), Ray Train's placement-group cleaner, which looks the cluster up
    # through the state API, otherwise cannot tell which instance is its own.
    head_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--num-cpus=2",
        "--include-dashboard=true",
        f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={rt_env}",
        f"--ray-client-server-port={client}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    proc = subprocess.Popen(
        cmd, env=head_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_dashboard(address, env, proc)
        yield {"address": address, "env": env, "serve_port": serve_port}
    finally:
        _stop_head(proc, temp_dir)


def _session_processes(sid: int) -> list[int]:
    """PIDs in session ``sid``: `ray start` was started as a session leader, and every
    process of its node (GCS, raylet, dashboard, workers) inherits its session."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid:  # state, ppid, pgrp, session
                pids.append(int(entry.name))
    return pids


def _stop_head(proc: subprocess.Popen, temp_dir: str) -> None:
    """Stop this head node only: SIGTERM to `ray start --block` (which stops what it
    started), then SIGKILL to what is left of its session after a few seconds (a graceful
    stop of a node that ran a job waits ~30 s)."""
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    for _ in range(5):
        left = _session_processes(proc.pid)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    proc.wait(timeout=30)
    assert not _session_processes(proc.pid), "processes of the test's head node survived"
    shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(address: str, env: dict, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {proc.stdout.read().decode()[-2000:]}")
        r = subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", address],
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode == 0:
            return
        time.sleep(1)
    raise TimeoutError(f"the head node's job API at {address} did not come up")


def test_pipeline_as_a_ray_job(head_node, tmp_path):
    env, address = head_node["env"], head_node["address"]
    out = tmp_path / "run"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
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

    t0 = time.monotonic()
    submit = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            ".",
            "--",
            "python",
            "-m",
            "workflows.pipeline",
            "--config",
            "workflows/configs/demo.yaml",
            f"output_dir={out}",
            f"tracking.tracking_uri={uri}",
            "synth.clips_per_class=3",
            "synth.seconds=2",
            "train.epochs=2",
            "tune.trials=1",
            "tune.grace_period=1",
            f"serve.port={head_node['serve_port']}",
            "serve.encoder_cpus=0.5",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    wall = time.monotonic() - t0
    assert submit.returncode == 0, (submit.stdout[-4000:], submit.stderr[-2000:])
    job_id = re.search(r"raysubmit_\w+", submit.stdout + submit.stderr).group(0)
    status = subprocess.run(
        [str(BIN / "ray"), "job", "status", job_id, "--address", address],
        env=env,
        capture_output=True,
        text=True,
    )
    plain = re.sub(r"\x1b\[[0-9;]*m", "", status.stdout + status.stderr)
    assert re.search(r"succeeded", plain, re.IGNORECASE), plain
    print(f"ray job: {wall:.0f} s")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("avarnet")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    (parent,) = [r for r in runs if r.data.tags.get("avarnet.stage") == "pipeline"]
    assert parent.info.status == "FINISHED"
    stages = {r.data.tags.get("avarnet.stage") for r in runs}
    assert {"data", "extract", "train", "tune", "serve"} <= stages
    assert client.get_model_version_by_alias("avarnet", "champion") is not None
    markers = {p.stem for p in (out / "stages").glob("*.json")}
    assert markers == {"data", "extract", "train", "tune", "serve"}
    serve_marker = json.loads((out / "stages" / "serve.json").read_text())
    assert serve_marker["label"] and serve_marker["url"].endswith(str(head_node["serve_port"]))

    # The service the job deployed stays up on the cluster after the job.
    r = requests.get(f"{serve_marker['url']}/v1/health", timeout=30)
    assert r.status_code == 200 and r.json()["model"]["name"] == "avarnet"

    # ... until an operator removes it, as the README says.
    _serve_cli(["shutdown", "--address", address, "--yes"], env)

    # An operator deploys the service from serve/config.yaml (this test's store and port,
    # CPUs scaled to the 2-CPU head node), then removes it again.
    cfg = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": head_node["serve_port"]}
    app = cfg["applications"][0]
    app["args"]["tracking_uri"] = uri
    for dep in app["deployments"]:
        dep["ray_actor_options"]["num_cpus"] = min(dep["ray_actor_options"]["num_cpus"], 0.5)
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg))
    _serve_cli(["deploy", str(config), "--address", address], env)
    url = serve_marker["url"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/v1/health", timeout=5).status_code == 200:
                break
        time.sleep(1)
    clip = serve_marker["clip"]
    with open(clip, "rb") as f:
        scored = requests.post(f"{url}/v1/score", files={"file": f}, timeout=120)
    assert scored.status_code == 200, scored.text
    assert scored.json()["model"]["uri"] == "models:/avarnet@champion"
    _serve_cli(["shutdown", "--address", address, "--yes"], env)


def _serve_cli(args: list[str], env: dict) -> None:
    res = subprocess.run(
        [str(BIN / "serve"), *args], env=env, capture_output=True, text=True, timeout=180, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-2000:]
