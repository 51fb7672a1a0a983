"""Run as a Ray job by test_ray_cluster.py: the same training in the driver (Ray Train's
local mode, ``train.workers=0``: the same training loop and data shards, without a worker
group's start-up) and with two DDP workers (the same global batch), in one driver, so the
two are compared on one cluster without a second job's start-up.

    python tests/workflows/ddp_job.py FEATURES OUT_DIR TRACKING_URI RESULT.json
"""

from __future__ import annotations

import json
import sys


def main(features: str, out: str, uri: str, result: str) -> None:
    from avarnet.config import load_config
    from glue.runtime import ray_session
    from glue.train import run_training

    results = {}
    with ray_session():
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
            res = run_training(cfg, features, tracking_uri=uri, register=False)
            results[workers] = {k: v for k, v in res.items() if k != "report"}
    with open(result, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
