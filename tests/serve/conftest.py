"""A registered model (tiny preset, seeded weights) in a real MLflow store, and the
scoring service deployed on the session's Ray, on a free port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def registered_model(tiny_spec, bench_rows, tmp_path_factory) -> dict:
    """``models:/avarnet@champion`` in a fresh sqlite store: an avarnet_tiny model with
    seeded weights for the benchmark's ten classes and the tiny FeatureSpec."""
    from avarnet.predictor import seeded_artifact
    from glue import tracking

    root = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    labels = sorted({r["label"] for r in bench_rows})
    artifact = seeded_artifact(root / "artifact", "avarnet_tiny", tiny_spec, labels)
    run = tracking.open_run(uri, "avarnet", "serve-test")
    model_uri = tracking.register_model(run, artifact, "avarnet", alias="champion")
    run.end()
    return {"tracking_uri": uri, "artifact": Path(artifact), "model_uri": model_uri, "root": root}


@pytest.fixture(scope="session")
def service(ray_session, registered_model):
    """The application, deployed from the registry alias once for every module that uses
    it (a deployment takes 15-20 s here); shut down at the end. test_limits.py deploys a
    service of its own under the same name, so it runs after them (tests/conftest.py)."""
    from serve.deploy import deploy, shutdown

    args = {
        "model": "models:/avarnet@champion",
        "tracking_uri": registered_model["tracking_uri"],
        "max_upload_mb": 1.0,
        "encoder_cpus": 0.25,
        "classifier_cpus": 0.1,
        # One Encoder replica, so that concurrent requests queue on it and are batched
        # (the batching test); the replica-kill test then kills the only one.
        "encoder_max_replicas": 1,
        "batch_wait_timeout_s": 0.05,
    }
    url = deploy(args, port=free_port())
    yield {"url": url, **registered_model}
    if ray_session.is_initialized():  # (the multi-node tests may have stopped it already)
        shutdown()
