"""Run as a Ray job by test_ray_job.py: what the project's workers see of their
environment when the driver joins a cluster somebody else started.

    python tests/workflows/job_probe.py OUT.json
"""

from __future__ import annotations

import json
import os
import sys


def _env() -> dict:
    from glue.runtime import WORKER_ENV

    return {k: os.environ.get(k) for k in WORKER_ENV}


def _train_loop(config: dict) -> None:
    with open(config["out"], "w") as f:
        json.dump(_env(), f)


def main(out: str) -> None:
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from glue.runtime import ray_session

    with ray_session():
        task_env = ray.data.range(1).map(lambda row: _env()).take(1)[0]
        worker_file = out + ".worker"
        TorchTrainer(
            _train_loop,
            train_loop_config={"out": worker_file},
            scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(storage_path=os.path.dirname(out), name="probe"),
        ).fit()
        with open(worker_file) as f:
            worker_env = json.load(f)
    with open(out, "w") as f:
        json.dump({"data_task": task_env, "train_worker": worker_env, "driver": _env()}, f)


if __name__ == "__main__":
    main(sys.argv[1])
