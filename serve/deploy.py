"""Start, inspect and stop the scoring application on the current Ray cluster."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

__all__ = [
    "APP_NAME",
    "CONTROLLER_ENV",
    "app_args",
    "controller_options",
    "deploy",
    "remove",
    "replica_counts",
    "shutdown",
    "wait_healthy",
]

APP_NAME = "avarnet"
# The Serve controller's environment (serve/config.yaml sets the same). Serve gives a new
# HTTP proxy 5 s to start before it kills it (RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S), and
# serve.start / `serve deploy` fail with the proxy's ActorDiedError when it does: on two
# cores with two busy processes beside the deploy, starting a proxy took longer, and both
# tries of `serve deploy` failed so. 30 s, what Serve gives a replica's health check (a
# proxy it kills anyway is restarted with 2x, 3x ... the allowance).
CONTROLLER_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}


def app_args(cfg, tracking_uri: str | None = None) -> dict[str, Any]:
    """``build_app`` arguments from the project's config: every ``serve.*`` setting (but
    ``host`` and ``port``, which :func:`deploy` takes) and the MLflow store."""
    import dataclasses
    from pathlib import Path

    from glue.tracking import resolve_tracking_uri
    from serve.app import HTTP_OPTIONS

    settings = dataclasses.asdict(cfg.serve)
    return {
        **{k: v for k, v in settings.items() if k not in HTTP_OPTIONS},
        "tracking_uri": tracking_uri or resolve_tracking_uri(cfg.tracking, cfg.output_dir),
        "output_dir": str(Path(cfg.output_dir).resolve()),
    }


def deploy(
    args: dict[str, Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = APP_NAME,
    timeout_s: float = 300.0,
    log_level: str = "WARNING",
) -> str:
    """Deploy ``build_app(args)`` under ``name`` at ``/`` and wait until it answers.

    Ray must be initialised. Returns the service's base URL. ``log_level`` INFO adds
    Serve's access log (one line per request) and replica events.
    """
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from serve.app import build_app

    refuse_other_address(host, port)
    logging_config = LoggingConfig(log_level=log_level)
    serve.start(
        http_options={"host": host, "port": port},
        logging_config=logging_config,
        controller_options=controller_options(),
    )
    logging.getLogger("ray.serve").setLevel(log_level)  # this process's "app is ready" lines
    serve.run(
        build_app(args),
        name=name,
        route_prefix="/",
        blocking=False,
        logging_config=logging_config,
    )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    wait_healthy(url, timeout_s)
    return url


def controller_options() -> dict[str, Any]:
    """``serve.start``'s ``controller_options``: :data:`CONTROLLER_ENV`, where a value
    set in this process's environment wins (and so reaches the controller on a cluster
    too)."""
    env = {k: os.environ.get(k, v) for k, v in CONTROLLER_ENV.items()}
    return {"runtime_env": {"env_vars": env}}


def refuse_other_address(host: str, port: int) -> bool:
    """Raise :class:`~glue.errors.CliError` when Serve already runs on the cluster at
    another host or port: Serve keeps the HTTP options it started with, and a deploy would
    wait on an address nobody serves. (Call it before anything that would shut Serve down
    on a failure: the running service is someone's.)

    Returns whether Serve is running already (at ``host:port``)."""
    from glue.errors import CliError
    from glue.private_api import running_serve_http_options

    running = running_serve_http_options()
    if running is not None and running != (host, port):
        at = f"{running[0]}:{running[1]}"
        raise CliError(
            f"Ray Serve is already running on this cluster at {at}, and keeps that address "
            f"until it stops: deploy at {at} (serve.host={running[0]} serve.port={running[1]})"
            f", or stop Serve first (`serve shutdown --yes`; this removes its applications)"
        )
    return running is not None


def wait_healthy(url: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """Poll ``GET /v1/health`` until it answers 200; returns its JSON."""
    import requests

    deadline = time.monotonic() + timeout_s
    last: Exception | str = "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/v1/health", timeout=5)
            if r.status_code == 200:
                return r.json()
            last = f"HTTP {r.status_code}"
        except requests.RequestException as err:
            last = err
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not become healthy within {timeout_s:.0f} s ({last})")


def replica_counts(name: str = APP_NAME) -> dict[str, int]:
    """Running replicas per deployment of application ``name`` (from Serve's status); ``{}``
    when there is no such application."""
    from ray import serve

    app = serve.status().applications.get(name)
    if app is None:
        return {}
    return {
        dep: int(status.replica_states.get("RUNNING", 0)) for dep, status in app.deployments.items()
    }


def remove(name: str = APP_NAME) -> None:
    """Delete application ``name`` and wait until its replicas are gone; Serve's
    controller, proxies and other applications keep running."""
    from ray import serve

    serve.delete(name)  # blocks until the application is gone


def shutdown() -> None:
    """Stop every Serve application and Serve's controller and proxies (not Ray)."""
    from ray import serve

    serve.shutdown()
