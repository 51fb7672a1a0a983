"""A Ray head node of one's own on this machine, for tests and benchmarks.

`ray start --head --block` with its own ports, temp dir and auth token (token auth on, as
on a real cluster), so it never touches another Ray on the machine; stopped by stopping
the process that was started and what is left of its session, never with a machine-wide
``ray stop``.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class HeadNode:
    address: str  # the job API (dashboard) URL
    gcs_address: str
    env: dict[str, str]  # what a job client needs (the token, PATH)
    serve_port: int

    def ray(self, *args: str, timeout: float = 900, cwd: str | os.PathLike | None = None):
        """Run ``ray ARGS`` against this node (``--address`` added for job commands)."""
        cmd = [str(BIN / "ray"), *args]
        if args[:1] == ("job",):  # before the entrypoint's "--"
            cmd = [str(BIN / "ray"), "job", args[1], "--address", self.address, *args[2:]]
        return subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=cwd
        )

    def job_status(self, job_id: str) -> str:
        """SUCCEEDED | FAILED | STOPPED | RUNNING | PENDING."""
        res = self.ray("job", "status", job_id)
        plain = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout + res.stderr)
        for status in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING"):
            if re.search(status, plain, re.IGNORECASE):
                return status
        return "UNKNOWN"


@contextlib.contextmanager
def head_node(num_cpus: int = 2, env: dict[str, str] | None = None) -> Iterator[HeadNode]:
    """Start a head node; ``env``: extra environment of the node's processes."""
    gcs, dash, agent, agent_grpc, metrics, rt_env, client, serve_port = free_ports(8)
    temp_dir = tempfile.mkdtemp(prefix="avr-")  # short: Ray's socket paths have a limit
    node_env = env
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    # Its processes get RAY_ADDRESS: with two Ray instances on one machine (a test
    # session has one), Ray Train's placement-group cleaner, which looks the cluster up
    # through the state API, otherwise cannot tell which instance is its own.
    head_env = {**env, **(node_env or {}), "RAY_ADDRESS": f"127.0.0.1:{gcs}"}
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        f"--num-cpus={num_cpus}",
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
    node = HeadNode(f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs}", env, serve_port)
    try:
        _wait_for_job_api(node, proc)
        yield node
    finally:
        _stop(proc, temp_dir)


def session_processes(sid: int) -> list[int]:
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


def _stop(proc: subprocess.Popen, temp_dir: str) -> None:
    """Stop this head node only: SIGTERM to `ray start --block` (which stops what it
    started), then SIGKILL to what is left of its session after a few seconds (a graceful
    stop of a node that ran a job waits ~30 s)."""
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    for _ in range(5):
        left = session_processes(proc.pid)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    proc.wait(timeout=30)
    if session_processes(proc.pid):
        raise RuntimeError("processes of the head node survived")
    shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_job_api(node: HeadNode, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {proc.stdout.read().decode()[-2000:]}")
        if node.ray("job", "list", timeout=60).returncode == 0:
            return
        time.sleep(1)
    raise TimeoutError(f"the head node's job API at {node.address} did not come up")
