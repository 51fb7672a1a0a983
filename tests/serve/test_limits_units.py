"""The service's request limits, replica fitting and client messages, without a cluster."""

from __future__ import annotations

import socket

import pytest

from serve.app import AppArgs
from serve.client import ScoreError, score_file
from serve.limits import ClipLimits, fit_resources


def _nodes(*cpus: float, gpus: float = 0.0) -> list[dict]:
    return [{"Alive": True, "Resources": {"CPU": c, "GPU": gpus}} for c in cpus]


def test_replicas_fit_a_two_cpu_laptop():
    a = fit_resources(AppArgs(encoder_max_replicas=8), _nodes(2.0))
    # 0.5 CPU per Encoder; Ingress (2 x 0.1) and Classifier (2 x 0.2) at their ceilings
    # leave 1.4 CPUs: two Encoders, never a third that could not be placed.
    assert (a.encoder_cpus, a.classifier_cpus, a.encoder_max_replicas) == (0.5, 0.2, 2)
    total = 2 * 0.1 + 2 * a.classifier_cpus + a.encoder_max_replicas * a.encoder_cpus
    assert total <= 2.0


def test_replicas_on_a_cluster_and_on_gpus():
    big = fit_resources(AppArgs(encoder_max_replicas=8), _nodes(16.0, 16.0))
    assert (big.encoder_cpus, big.classifier_cpus, big.encoder_max_replicas) == (1.0, 0.5, 8)
    # Two GPUs, one per Encoder: at most two Encoders, whatever the CPUs.
    gpu = fit_resources(AppArgs(encoder_max_replicas=8, encoder_gpus=1.0), _nodes(16, 16, gpus=1))
    assert gpu.encoder_max_replicas == 2
    # Explicit CPUs are kept; the ceiling still fits (4 CPUs: 4 - 0.2 - 1.0 = 2.8 -> 2).
    own = fit_resources(AppArgs(encoder_cpus=1.0, encoder_max_replicas=8), _nodes(4.0))
    assert (own.encoder_cpus, own.encoder_max_replicas) == (1.0, 2)
    # Never under the minimum, and left alone when fitting is off (an autoscaling cluster).
    tiny = fit_resources(AppArgs(encoder_cpus=4.0), _nodes(1.0))
    assert tiny.encoder_max_replicas == tiny.encoder_min_replicas == 1
    off = fit_resources(AppArgs(encoder_max_replicas=8, fit_resources=False), _nodes(2.0))
    assert off.encoder_max_replicas == 8 and off.encoder_cpus == 1.0


def test_app_args_from_serve_run_strings():
    a = AppArgs.from_dict({"max_clip_seconds": "60", "fit_resources": "false", "max_segments": "0"})
    assert a.max_clip_seconds == 60.0 and a.fit_resources is False and a.max_segments == 0
    with pytest.raises(ValueError, match="max_clip_seconds must be >= 0"):
        AppArgs.from_dict({"max_clip_seconds": -1})
    with pytest.raises(ValueError, match="upload_idle_timeout_s"):
        AppArgs.from_dict({"upload_idle_timeout_s": 0})
    with pytest.raises(ValueError, match="unknown build_app argument"):
        AppArgs.from_dict({"max_clip_secs": 1})
    with pytest.raises(ValueError, match="upload_dir must be an absolute path"):
        AppArgs.from_dict({"upload_dir": "uploads"})
    assert AppArgs.from_dict({"upload_dir": "/scratch/up"}).upload_dir == "/scratch/up"


def test_app_args_are_the_serve_config():
    # Every serve.* setting reaches build_app (host and port are Serve's HTTP options), with
    # its ServeConfig default and from the project's config and its overrides.
    import dataclasses

    from avarnet.config import ServeConfig, load_config
    from serve.deploy import app_args

    serve_keys = {f.name for f in dataclasses.fields(ServeConfig)}
    assert {f.name for f in dataclasses.fields(AppArgs)} == serve_keys | {
        "tracking_uri",
        "output_dir",
    }
    settings = serve_keys - {"host", "port"}
    assert dataclasses.asdict(AppArgs.from_dict({})) == {
        **dataclasses.asdict(ServeConfig()),
        **{"tracking_uri": None, "output_dir": AppArgs().output_dir},
    }
    cfg = load_config(None, ["serve.classifier_cpus=0.3", "serve.max_batch_size=8"])
    args = app_args(cfg, "sqlite:///x.db")
    assert set(args) == settings | {"tracking_uri", "output_dir"}
    a = AppArgs.from_dict(args)
    assert (a.classifier_cpus, a.max_batch_size, a.tracking_uri) == (0.3, 8, "sqlite:///x.db")
    # `serve run ... model=...` and config.yaml's `model:` name serve.model_uri.
    assert AppArgs.from_dict({"model": "runs/m"}).model_uri == "runs/m"
    assert AppArgs.from_dict({"fit_resources": "on", "threads": "2"}).threads == 2
    with pytest.raises(ValueError, match="encoder_max_replicas must be >= encoder_min"):
        AppArgs.from_dict({"encoder_min_replicas": "3", "encoder_max_replicas": "2"})
    with pytest.raises(ValueError, match="unknown build_app argument.*'port'"):
        AppArgs.from_dict({"port": 8001})


def test_clip_limits_say_what_is_over_and_where_to_go():
    limits = ClipLimits(max_seconds=300, max_pixels=1920 * 1080, max_segments=100)
    assert limits.problem(duration_s=299.0, width=1920, height=1080, n_segments=100) is None
    assert limits.problem(duration_s=None, width=64, height=64) is None  # measured later
    long = limits.problem(duration_s=7200.0, width=64, height=64)
    assert "7200.0 s long" in long and "serve.max_clip_seconds" in long and "batch" in long
    big = limits.problem(duration_s=1.0, width=3840, height=2160)
    assert "3840x2160" in big and "serve.max_frame_pixels" in big
    many = limits.problem(duration_s=10.0, width=64, height=64, n_segments=101)
    assert "101 segments" in many and "serve.max_segments" in many
    assert ClipLimits().problem(duration_s=1e9, width=10**5, height=10**5, n_segments=10**9) is None


def test_score_client_says_nothing_answers_on_a_closed_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    with pytest.raises(ScoreError) as info:
        score_file(f"http://127.0.0.1:{port}", clip, timeout_s=5)
    message = str(info.value)
    assert info.value.status == 0 and "nothing answers there" in message
    assert "Max retries" not in message and "urllib3" not in message


def test_encoder_replicas_fit_the_nodes_their_labels_allow():
    gpu_pool = {"avarnet.io/pool": "gpu"}
    nodes = [
        {"Alive": True, "Resources": {"CPU": 16.0}, "Labels": {"avarnet.io/pool": "cpu"}},
        {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 2.0}, "Labels": gpu_pool},
    ]
    # 20 CPUs in all, but Encoders may only use the GPU node's 4 (and its 2 GPUs).
    a = fit_resources(AppArgs(encoder_max_replicas=8, encoder_labels=gpu_pool), nodes)
    assert a.encoder_max_replicas == 4
    g = fit_resources(
        AppArgs(encoder_max_replicas=8, encoder_gpus=1.0, encoder_labels=gpu_pool), nodes
    )
    assert g.encoder_max_replicas == 2
    # No such node (yet): nothing is capped, the deploy says why replicas wait.
    none = fit_resources(
        AppArgs(encoder_max_replicas=8, encoder_labels={"avarnet.io/pool": "tpu"}), nodes
    )
    assert none.encoder_max_replicas == 8


def test_replica_labels_from_serve_run_strings_and_yaml():
    a = AppArgs.from_dict({"encoder_labels": "avarnet.io/pool=gpu,zone=in(a,b)"})
    assert a.encoder_labels == {"avarnet.io/pool": "gpu", "zone": "in(a,b)"}
    assert AppArgs.from_dict({"classifier_labels": {"k": "v"}}).classifier_labels == {"k": "v"}
    with pytest.raises(ValueError, match="serve.encoder_labels: 'gpu' is not of the form"):
        AppArgs.from_dict({"encoder_labels": "gpu"})
