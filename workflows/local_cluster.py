"""A Ray cluster of one's own on this machine, for tests and benchmarks.

`ray start --head --block` with its own ports, temp dir and auth token (token auth on, as
on a real cluster), so it never touches another Ray on the machine; with
:func:`cluster`, worker nodes too (`ray start --address=HEAD --block`, each its own
raylet, CPUs, labels and HTTP proxy port): Ray runs several nodes on one machine the way it
runs them on many. Every node is stopped by stopping the process that was started and what
is left of its session, never with a machine-wide ``ray stop``; :meth:`Cluster.kill_node`
SIGKILLs one node's raylet and workers, as a lost machine would.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    temp_dir: str = ""

    def ray(self, *args: str, timeout: float = 900, cwd: str | os.PathLike | None = None):
        """Run ``ray ARGS`` against this node (``--address`` added for job commands)."""
        cmd = [str(BIN / "ray"), *args]
        if args[:1] == ("job",):  # before the entrypoint's "--"
            cmd = [str(BIN / "ray"), "job", args[1], "--address", self.address, *args[2:]]
        return subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=cwd
        )

    def api(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """``GET path`` of the head's dashboard (the job and state APIs) with the cluster's
        token, as JSON: an HTTP request instead of a ``ray`` CLI start-up (1-2 s of CPU
        each, which polling would take from the jobs under test)."""
        import requests

        r = requests.get(
            f"{self.address}{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"},
            timeout=60,
        )
        r.raise_for_status()
        return r.json()

    def jobs_api(self, path: str = "") -> Any:
        """``GET /api/jobs/<path>``: what ``ray job status`` and ``ray job list`` read."""
        return self.api(f"/api/jobs/{path}")

    def job_logs(self, job_id: str) -> str:
        """The job driver's log so far: what ``ray job logs`` prints."""
        return str(self.jobs_api(f"{job_id}/logs")["logs"])

    def job_status(self, job_id: str) -> str:
        """SUCCEEDED | FAILED | STOPPED | RUNNING | PENDING (UNKNOWN: no such job)."""
        import requests

        try:
            return str(self.jobs_api(job_id)["status"])
        except requests.HTTPError as err:
            if err.response is not None and err.response.status_code == 404:
                return "UNKNOWN"
            raise


@contextlib.contextmanager
def head_node(
    num_cpus: int = 2, env: dict[str, str] | None = None, labels: dict[str, str] | None = None
) -> Iterator[HeadNode]:
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
        *([f"--labels={_labels_arg(labels)}"] if labels else []),
    ]
    proc = _popen(cmd, head_env, temp_dir)
    node = HeadNode(f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs}", env, serve_port, temp_dir)
    try:
        _wait_for_job_api(node, proc)
        yield node
    finally:
        _stop(proc, temp_dir)


def _labels_arg(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _popen(cmd: list[str], env: dict[str, str], temp_dir: str) -> subprocess.Popen:
    """Start ``ray start ...`` as a session leader (its node's processes inherit the
    session, which is how they are found and stopped), its output to a log in its temp dir."""
    log = open(Path(temp_dir) / "ray-start.log", "wb")  # noqa: SIM115 (kept for the node's life)
    try:
        return subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        log.close()  # the child holds its own descriptor


@dataclass
class WorkerNode:
    name: str
    num_cpus: float
    labels: dict[str, str]
    serve_port: int  # this node's Serve HTTP proxy
    proc: subprocess.Popen
    temp_dir: str
    node_id: str = ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and bool(session_processes(self.proc.pid))


@dataclass
class Cluster:
    """A head node (:class:`HeadNode`) and worker nodes joined to it."""

    head: HeadNode
    nodes: list[WorkerNode]

    def __getattr__(self, name: str):  # the head's address, env, ray(), job_status()
        return getattr(self.head, name)

    def add_node(
        self, name: str, num_cpus: float = 1, labels: dict[str, str] | None = None
    ) -> WorkerNode:
        """Start a worker node joined to the head and wait until the cluster lists it."""
        return self.add_nodes([{"name": name, "num_cpus": num_cpus, "labels": labels}])[0]

    def add_nodes(self, specs: list[dict]) -> list[WorkerNode]:
        """Start several worker nodes (``{"name": .., "num_cpus": .., "labels": {..}}``)
        at once, then wait until the cluster lists every one: each node's start-up is
        mostly waiting on its own processes, so side by side they take little longer
        than one."""
        started = [
            self._start_node(s["name"], s.get("num_cpus", 1), s.get("labels")) for s in specs
        ]
        for node in started:
            node.node_id = self._wait_for_node(node)
        return started

    def _start_node(self, name: str, num_cpus: float, labels: dict[str, str] | None) -> WorkerNode:
        node_mgr, obj_mgr, metrics, agent, agent_grpc, rt_env, serve_port = free_ports(7)
        temp_dir = tempfile.mkdtemp(prefix="avr-")
        labels = {"avarnet.io/node": name, **(labels or {})}
        cmd = [
            str(BIN / "ray"),
            "start",
            f"--address={self.head.gcs_address}",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus:g}",
            f"--labels={_labels_arg(labels)}",
            f"--node-manager-port={node_mgr}",
            f"--object-manager-port={obj_mgr}",
            f"--metrics-export-port={metrics}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={rt_env}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ]
        # Its Serve proxy binds its own port (they would share one on a real cluster,
        # where every node has its own address).
        env = {**self.head.env, "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(serve_port)}
        env["RAY_ADDRESS"] = self.head.gcs_address
        node = WorkerNode(name, num_cpus, labels, serve_port, _popen(cmd, env, temp_dir), temp_dir)
        self.nodes.append(node)
        return node

    def node(self, name: str) -> WorkerNode:
        return next(n for n in self.nodes if n.name == name)

    def list_nodes(self) -> list[dict]:
        """The cluster's nodes from Ray's state API (``ray list nodes``)."""
        return self.state("nodes")

    def state(self, kind: str, *filters: str, detail: bool = False) -> list[dict]:
        """Ray's state API records of ``kind`` (nodes, tasks, actors, jobs, ...), with
        ``key=value`` filters: what ``ray list KIND`` shows, read over HTTP from the head's
        dashboard (a tenth of a second instead of a CLI start-up)."""
        params: dict[str, Any] = {"limit": 10000, "detail": int(detail)}
        for f in filters:
            key, _, value = f.partition("=")
            params.setdefault("filter_keys", []).append(key)
            params.setdefault("filter_predicates", []).append("=")
            params.setdefault("filter_values", []).append(value)
        body = self.head.api(f"/api/v0/{kind}", params)
        if not body.get("result"):
            raise RuntimeError(f"state API ({kind}): {body.get('msg')}")
        return body["data"]["result"]["result"]

    def job(self, submission_id: str) -> dict:
        """The state API's record of a submitted job (``status``, ``job_id``, ...)."""
        jobs = [j for j in self.state("jobs") if j.get("submission_id") == submission_id]
        if not jobs:
            raise LookupError(f"no job {submission_id} in the cluster")
        return jobs[0]

    def job_id(self, submission_id: str) -> str:
        """The Ray job id (what tasks and actors are filed under) of a submitted job."""
        jid = self.job(submission_id).get("job_id")
        if not jid:  # a pending job's driver has no id yet
            raise LookupError(f"job {submission_id} has not started in the cluster")
        return jid

    def node_names(self) -> dict[str, str]:
        """node id -> ``head`` or the worker node's name."""
        names = {n.node_id: n.name for n in self.nodes}
        for n in self.list_nodes():
            default = "head" if n.get("is_head_node") else n["node_id"][:8]
            names.setdefault(n["node_id"], default)
        return names

    def placement(
        self, kind: str, name: str, submission_id: str | None = None, state: str | None = None
    ) -> Counter:
        """From Ray's own records: how many ``kind`` records (``tasks`` or ``actors``),
        of the job ``submission_id`` when given, in ``state`` when given (``FINISHED``,
        ``ALIVE``, ...), whose task name or actor class contains ``name``, ran on each node
        (by node name)."""
        filters = [f"job_id={self.job_id(submission_id)}"] if submission_id else []
        filters += [f"state={state}"] if state else []
        names = self.node_names()
        field = "name" if kind == "tasks" else "class_name"
        seen: Counter = Counter()
        for rec in self.state(kind, *filters, detail=True):
            if name in (rec.get(field) or "") and rec.get("node_id"):
                seen[names.get(rec["node_id"], rec["node_id"][:8])] += 1
        return seen

    def kill_node(self, name: str) -> None:
        """SIGKILL a worker node's raylet and every process of it, as a lost machine."""
        node = self.node(name)
        for pid in session_processes(node.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.proc.wait(timeout=30)

    def remove_node(self, name: str) -> None:
        """Stop a worker node (its processes only) and forget it."""
        node = self.node(name)
        _stop(node.proc, node.temp_dir, check=False)
        self.nodes.remove(node)

    def _wait_for_node(self, node: WorkerNode) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                log = (Path(node.temp_dir) / "ray-start.log").read_text()[-2000:]
                raise RuntimeError(f"ray start (node {node.name}) exited: {log}")
            for n in self.list_nodes():
                if (
                    n.get("state") == "ALIVE"
                    and n.get("labels", {}).get("avarnet.io/node") == node.name
                ):
                    return n["node_id"]
            time.sleep(1)
        raise TimeoutError(f"node {node.name} did not join the cluster in 120 s")


# Each node's object store: the tests move small tables; Ray's default (30 % of memory
# per node) would let three nodes claim most of a small machine's shared memory.
OBJECT_STORE_BYTES = 512 * 1024 * 1024


@contextlib.contextmanager
def cluster(
    workers: list[dict] | None = None,
    head_cpus: int = 0,
    env: dict[str, str] | None = None,
    head_labels: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """A head node (``head_cpus``: 0 keeps work off it, as on a real cluster whose head
    runs only the drivers and Ray's own services) and one worker node per entry of
    ``workers`` (``{"name": .., "num_cpus": .., "labels": {..}}``); everything stopped at the
    end, nodes first."""
    with head_node(num_cpus=head_cpus, env=env, labels=head_labels) as head:
        c = Cluster(head, [])
        try:
            c.add_nodes(workers or [])
            yield c
        finally:
            _stop_all([(n.proc, n.temp_dir) for n in c.nodes], check=False)


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


def _stop(proc: subprocess.Popen, temp_dir: str, check: bool = True) -> None:
    """Stop this node only: SIGTERM to `ray start --block` (which stops what it started),
    then SIGKILL to what is left of its session after a few seconds (a graceful stop of a
    node that ran a job waits ~30 s)."""
    _stop_all([(proc, temp_dir)], check=check)


def _stop_all(nodes: list[tuple[subprocess.Popen, str]], check: bool = True) -> None:
    """:func:`_stop` for several nodes at once: every one is told first, so their grace
    periods run side by side rather than one after the other."""
    for proc, _ in nodes:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for proc, _ in nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for _ in range(5):
        left = [pid for proc, _ in nodes for pid in session_processes(proc.pid)]
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    survived = False
    for proc, temp_dir in nodes:
        proc.wait(timeout=30)
        survived |= bool(session_processes(proc.pid))
        shutil.rmtree(temp_dir, ignore_errors=True)
    if survived and check:
        raise RuntimeError("processes of a Ray node survived")


def _wait_for_job_api(node: HeadNode, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = Path(node.temp_dir) / "ray-start.log"
            raise RuntimeError(f"ray start exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError, ValueError):  # not up yet (requests' errors)
            node.jobs_api()
            return
        time.sleep(1)
    raise TimeoutError(f"the head node's job API at {node.address} did not come up")
