"""serve.deploy without Ray: the build_app arguments it makes from a config, and waiting
for a service that never answers."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from avarnet.config import ServeConfig, load_config
from serve.deploy import APP_NAME, app_args, wait_healthy

CHANGED = {
    "model_uri": "models:/avarnet/4",
    "max_upload_mb": 5.0,
    "encoder_max_replicas": 3,
    "encoder_gpus": 0.5,
    "fit_resources": False,
    "max_segments": 64,
    "max_batch_size": 2,
    "classifier_max_replicas": 1,
}


def _parsed(args):
    """build_app's own reading of its arguments."""
    from serve.app import AppArgs

    return AppArgs.from_dict(args)


def test_app_args_from_a_config(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = [f"serve.{k}={str(v).lower()}" for k, v in CHANGED.items()]
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", *overrides])
    args = app_args(cfg)
    assert args["tracking_uri"] == f"sqlite:///{(tmp_path / 'run').resolve() / 'mlflow.db'}"
    assert args["output_dir"] == str((tmp_path / "run").resolve())
    assert "host" not in args and "port" not in args  # Serve's HTTP options, not app args
    parsed = _parsed(args)
    for key, value in CHANGED.items():
        assert getattr(parsed, key) == value, key
    assert APP_NAME == "avarnet"


def test_app_args_take_the_given_tracking_uri(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    assert app_args(cfg, "http://mlflow:5000")["tracking_uri"] == "http://mlflow:5000"
    cfg = load_config(None, [f"output_dir={tmp_path}", "tracking.tracking_uri=sqlite:////x.db"])
    assert app_args(cfg)["tracking_uri"] == "sqlite:////x.db"


def test_every_serve_setting_but_host_and_port_reaches_build_app(tmp_path):
    """A setting app_args left out would silently take build_app's default for `avarnet
    serve` and the pipeline's serve stage."""
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    parsed = _parsed(app_args(cfg))
    for f in dataclasses.fields(ServeConfig):
        if f.name not in ("host", "port"):
            assert getattr(parsed, f.name) == getattr(cfg.serve, f.name), f.name
    cfg = load_config(
        None, [f"output_dir={tmp_path}", "serve.threads=3", "serve.ingress_max_replicas=1"]
    )
    parsed = _parsed(app_args(cfg))
    assert (parsed.threads, parsed.ingress_max_replicas) == (3, 1)


def test_wait_healthy_gives_up_naming_the_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(TimeoutError, match=rf"{url} did not become healthy within 1 s"):
        wait_healthy(url, timeout_s=1.0)


def test_serve_config_yaml_gives_the_controller_what_deploy_gives_it():
    """`serve deploy serve/config.yaml` and `avarnet serve` start Serve's controller with
    the same environment (the proxy's start-up allowance), in a block Serve's own deploy
    schema accepts."""
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from serve.deploy import CONTROLLER_ENV

    path = Path(__file__).resolve().parents[2] / "serve" / "config.yaml"
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    assert schema.controller_options.runtime_env["env_vars"] == CONTROLLER_ENV


def test_a_proxy_allowance_set_in_the_environment_reaches_the_controller(monkeypatch):
    from serve.deploy import CONTROLLER_ENV, controller_options

    (key,) = CONTROLLER_ENV
    monkeypatch.delenv(key, raising=False)
    assert controller_options() == {"runtime_env": {"env_vars": CONTROLLER_ENV}}
    monkeypatch.setenv(key, "90")
    assert controller_options()["runtime_env"]["env_vars"][key] == "90"
