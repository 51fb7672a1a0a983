"""On a real multi-node cluster (the session's ``ray_cluster``: a head that runs no work
and two one-CPU worker nodes, ``cpu1`` for decoding and ``cpu2`` for compute): training
across nodes, and extraction that survives a lost node. Where the work ran is read from
Ray's own records (the state API), never assumed. The pipeline job with its placement
and the Serve proxies of every node: tests/workflows/test_ray_job.py."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def submit(cluster, *entrypoint: str, wait: bool = True, timeout: float = 600):
    """``ray job submit --working-dir . -- ENTRYPOINT``; returns (result, submission id)."""
    res = cluster.ray(
        "job",
        "submit",
        *(() if wait else ("--no-wait",)),
        "--working-dir",
        ".",
        "--",
        *entrypoint,
        cwd=ROOT,
        timeout=timeout,
    )
    found = re.search(r"raysubmit_\w+", res.stdout + res.stderr)
    assert found, (res.stdout[-3000:], res.stderr[-2000:])
    return res, found.group(0)


def test_ddp_training_across_two_nodes_matches_one_worker(
    tiny_features, ray_cluster, tmp_path, new_store
):
    """Training as a Ray job, in the job's driver (one process, Ray Train's local mode) and
    then with two DDP workers (gloo) of the same global batch (tests/workflows/ddp_job.py):
    the two workers run on two different nodes, and they learn what one process learns.
    The job's driver joined a cluster started with plain `ray start`: what the project
    needs in its workers' environment still reaches a Ray Data task and the training
    workers, without --runtime-env-json."""
    from glue.runtime import WORKER_ENV

    uri = new_store(tmp_path)
    out = tmp_path / "result.json"
    res, sid = submit(
        ray_cluster,
        "python",
        "tests/workflows/ddp_job.py",
        str(tiny_features),
        str(tmp_path),
        uri,
        str(out),
    )
    assert res.returncode == 0, ray_cluster.job_logs(sid)[-4000:]
    result = json.loads(out.read_text())
    one, two = result["0"], result["2"]
    assert result["data_task_env"] == WORKER_ENV, result["data_task_env"]
    assert result["train_worker_envs"] == [WORKER_ENV] * 2, result["train_worker_envs"]
    placed = ray_cluster.placement("actors", "RayTrainWorker", sid)
    print(f"training workers per node: {dict(placed)}")
    # Two workers at once: nodes of one CPU each hold one worker each.
    assert set(placed) == {"cpu1", "cpu2"} and sum(placed.values()) == 2, placed
    client = MlflowClient(uri)

    def history(run_id: str, key: str) -> list[float]:
        points = client.get_metric_history(run_id, key)
        return [m.value for m in sorted(points, key=lambda m: m.step)]

    val_one, val_two = history(one["run_id"], "val_loss"), history(two["run_id"], "val_loss")
    print(f"val_loss per epoch: 1 process {val_one}; 2 workers {val_two}")
    print(f"test accuracy: 1 process {one['accuracy']:.3f}; 2 workers {two['accuracy']:.3f}")
    assert len(val_one) == len(val_two) == 4
    # Each step of the two workers together sees the rows of the one process's step
    # (avarnet.training.table_batches), and DDP averages their gradients: not bit-equal
    # only by dropout's masks and augmentation, which each worker draws for its own
    # half-batch (measured: within 0.5 % per epoch).
    assert val_two[-1] < val_two[0] and val_one[-1] < val_one[0]
    for a, b in zip(val_one, val_two):
        assert abs(a - b) <= 0.02 * a, (val_one, val_two)
    assert abs(one["accuracy"] - two["accuracy"]) <= 0.2


def test_extraction_survives_a_lost_node(ray_cluster, bench_rows, tmp_path, new_store):
    """A third node joins; extraction runs as a Ray job with decode tasks on cpu1 and two
    encoder actors on the compute nodes; while clips are being encoded, one node that holds
    an encoder actor is SIGKILLed (its raylet and every worker of it). The job finishes on
    the nodes that are left, and every clip is in the table exactly once."""
    import pyarrow.parquet as pq

    from avarnet.data.manifest import write_manifest_csv
    from avarnet.features import table as ft

    # The benchmark's clips twice over, under other ids: enough work (80 clips) for the
    # node to be lost while clips are still being encoded (it is lost once 10 are).
    rows = [{**r, "video_id": f"{r['video_id']}-{k}"} for k in range(2) for r in bench_rows]
    manifest = write_manifest_csv(rows, tmp_path / "manifest.csv")
    compute = {"avarnet.io/pool": ray_cluster.node("cpu2").labels["avarnet.io/pool"]}
    spare = ray_cluster.add_node("spare", num_cpus=1, labels=compute)
    out = tmp_path / "features"
    _, sid = submit(
        ray_cluster,
        "python",
        "-m",
        "workflows.cli",
        "extract",
        "--data",
        str(manifest),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--workers",
        "2",
        "--decode-on",
        "avarnet.io/pool=decode",
        "--encode-on",
        "avarnet.io/pool=compute",
        "--json",
        f"output_dir={tmp_path}",
        f"tracking.tracking_uri={new_store(tmp_path)}",
        # Fractions of a CPU: once a node is gone, the one compute node left holds both
        # encoder actors (the restarted one too) next to nothing else.
        "features.encoder_cpus=0.5",
        "features.decode_cpus=0.5",
        "features.batch_size=1",
        wait=False,
    )
    try:
        victim, encoded_before = _kill_a_node_while_encoding(ray_cluster, sid)
        assert encoded_before < len(rows) - 20  # clips were still left to encode
        deadline = time.monotonic() + 600
        while (status := ray_cluster.job_status(sid)) in ("PENDING", "RUNNING"):
            if time.monotonic() > deadline:
                raise AssertionError(
                    "the job did not finish in 600 s:\n" + ray_cluster.job_logs(sid)[-6000:]
                )
            time.sleep(2)
        logs = ray_cluster.job_logs(sid)
        assert status == "SUCCEEDED", logs[-4000:]
        ids = [i for p in ft.part_files(out) for i in pq.read_table(p)["video_id"].to_pylist()]
        counts = Counter(ids)
        assert sorted(counts) == sorted(r["video_id"] for r in rows)
        assert set(counts.values()) == {1}, counts.most_common(3)
        assert ft.read_errors(out) == []
        encoded = ray_cluster.placement("tasks", "ChunkEncoder", sid, state="FINISHED")
        print(
            f"killed {victim} after {encoded_before} of {len(rows)} chunks were encoded; "
            f"encoder calls finished per node: {dict(encoded)}"
        )
        assert set(encoded) <= {"cpu2", "spare"}
        assert set(ray_cluster.placement("tasks", "decode_row", sid)) == {"cpu1"}
    finally:
        _restore(ray_cluster, spare, compute)


def _kill_a_node_while_encoding(cluster, sid: str) -> tuple[str, int]:
    """Wait until some chunks are encoded and clips are still left, then SIGKILL the compute
    node that holds an encoder actor (``spare`` when it holds one)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = cluster.job(sid)["status"]
        assert status in ("PENDING", "RUNNING"), cluster.job_logs(sid)[-3000:]
        try:
            actors = cluster.placement("actors", "ChunkEncoder", sid, state="ALIVE")
            done = cluster.placement("tasks", "ChunkEncoder", sid, state="FINISHED")
        except LookupError:  # the driver has not started yet
            time.sleep(0.5)
            continue
        if sum(done.values()) >= 10 and actors:
            victim = "spare" if "spare" in actors else "cpu2"
            cluster.kill_node(victim)
            return victim, sum(done.values())
        time.sleep(0.5)
    raise AssertionError("no chunk was encoded in 300 s")


def _restore(cluster, spare, compute: dict[str, str]) -> None:
    """Leave the session's cluster as it was: cpu1 + cpu2, no spare."""
    if spare in cluster.nodes:
        cluster.remove_node("spare")
    if not cluster.node("cpu2").alive:
        cluster.remove_node("cpu2")
        cluster.add_node("cpu2", num_cpus=1, labels=compute)
