"""Run as a Ray job by test_ray_cluster.py: the same training in the driver (Ray Train's
local mode, ``train.workers=0``: the same training loop and data shards, without a worker
group's start-up) and with two DDP workers (the same global batch), in one driver, so the
two are compared on one cluster without a second job's start-up. It also records what a
Ray Data task and the training workers see of the environment the project sets for its
workers (glue.runtime.WORKER_ENV): the driver joined a cluster somebody else started.

    python tests/workflows/ddp_job.py FEATURES OUT_DIR TRACKING_URI RESULT.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _env() -> dict:
    from glue.runtime import WORKER_ENV

    return {k: os.environ.get(k) for k in WORKER_ENV}


class EnvProbe:
    """An epoch hook (glue.train's loop config): each training worker writes its
    environment to ``folder/worker-<pid>.json`` at its first epoch."""

    def __init__(self, folder: str):
        self.folder = folder

    def __call__(self, epoch: int) -> None:
        path = Path(self.folder) / f"worker-{os.getpid()}.json"
        if not path.exists():
            path.write_text(json.dumps(_env()))


def main(features: str, out: str, uri: str, result: str) -> None:
    import ray.data

    from avarnet.config import load_config
    from glue.runtime import ray_session
    from glue.train import run_training

    results: dict = {}
    probes = Path(out) / "env"
    probes.mkdir(parents=True, exist_ok=True)
    with ray_session():
        results["data_task_env"] = ray.data.range(1).map(lambda row: _env()).take(1)[0]
        for workers in (0, 2):
            cfg = load_config(
                None,
                [
                    f"output_dir={out}/w{workers}",
                    f"train.workers={workers}",
                    "train.epochs=4",
                    "train.batch_size=8",  # the global batch: 8, or 4 on each of two workers
                    "train.warmup_epochs=1",
                    "train.seed=0",
                ],
            )
            hook = {"epoch_hook": EnvProbe(str(probes))} if workers else None
            res = run_training(cfg, features, tracking_uri=uri, register=False, loop_overrides=hook)
            results[workers] = {k: v for k, v in res.items() if k != "report"}
    results["train_worker_envs"] = [json.loads(p.read_text()) for p in probes.glob("*.json")]
    with open(result, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
