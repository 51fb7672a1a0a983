"""The demo pipeline as a Ray job on a head node against the same config run locally.

Both run the same config from empty output folders, one after the other, on this
machine: locally (``python -m workflows.pipeline``, which starts its own Ray), and with
``ray job submit --working-dir .`` to a head node started with plain ``ray start --head``
(token auth on, as a user's cluster). Printed: each stage's seconds and the ratio of the
sums (target <= 1.3)::

    python benchmarks/ray_job.py [--config workflows/configs/demo.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workflows.local_cluster import free_ports, head_node  # noqa: E402


def _summary(text: str) -> dict:
    """The pipeline's --json document (the job's log has Ray's lines around it)."""
    for line in reversed(text.splitlines()):
        if line.startswith('{"stages"'):
            return json.loads(line)
    raise ValueError(f"no pipeline summary in:\n{text[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="workflows/configs/demo.yaml")
    ap.add_argument("overrides", nargs="*", help="config overrides for both runs")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="avarnet-bench-job-"))
    (port_local, port_job) = free_ports(2)

    def cmd(out: Path, port: int) -> list[str]:
        return [
            "python",
            "-m",
            "workflows.pipeline",
            "--config",
            args.config,
            "--json",
            f"output_dir={out}",
            f"serve.port={port}",
            *args.overrides,
        ]

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    t0 = time.perf_counter()
    local = subprocess.run(
        cmd(work / "local", port_local), cwd=ROOT, env=env, capture_output=True, text=True
    )
    local_wall = time.perf_counter() - t0
    if local.returncode != 0:
        raise SystemExit(f"local run failed:\n{local.stderr[-3000:]}")
    local_stages = {s["stage"]: s["seconds"] for s in _summary(local.stdout)["stages"]}

    with head_node(num_cpus=os.cpu_count() or 2) as node:
        t0 = time.perf_counter()
        job = node.ray(
            "job", "submit", "--working-dir", ".", "--", *cmd(work / "job", port_job), cwd=ROOT
        )
        job_wall = time.perf_counter() - t0
        if job.returncode != 0:
            raise SystemExit(f"job failed:\n{job.stdout[-3000:]}\n{job.stderr[-2000:]}")
        job_stages = {s["stage"]: s["seconds"] for s in _summary(job.stdout)["stages"]}

    print(f"{'stage':<10}{'local s':>10}{'job s':>10}{'ratio':>8}")
    for stage, secs in local_stages.items():
        js = job_stages.get(stage, float("nan"))
        print(f"{stage:<10}{secs:>10.1f}{js:>10.1f}{js / secs if secs else float('nan'):>8.2f}")
    ls, jsum = sum(local_stages.values()), sum(job_stages.values())
    print(f"{'sum':<10}{ls:>10.1f}{jsum:>10.1f}{jsum / ls:>8.2f}   (target <= 1.3)")
    print(f"wall (incl. Ray start, upload): local {local_wall:.1f} s, job {job_wall:.1f} s")


if __name__ == "__main__":
    main()
