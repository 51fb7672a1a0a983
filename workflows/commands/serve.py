"""``avarnet serve`` (deploy the Ray Serve app) and ``avarnet score`` (a client of it)."""

from __future__ import annotations

import argparse

from glue import console
from glue.errors import CliError
from workflows.commands._common import (
    SubParsers,
    add_config_args,
    add_placement_args,
    config_log_dir,
    emit,
    flag_overrides,
    load_cfg,
)


def add(sub: SubParsers) -> None:
    from avarnet.config import ServeConfig

    p = sub.add_parser(
        "serve",
        help="score clips online: deploy the model with Ray Serve (HTTP API + web page)",
        description=(
            "Deploy a model (default: the registry's champion, models:/avarnet@champion) "
            "with Ray Serve: an autoscaled encoder deployment (decode + Wav2Vec2 + MobileViT, "
            "built from the FeatureSpec saved with the model), the MTCN classifier and an "
            "HTTP API: POST /v1/score, GET /v1/health, GET /v1/model, the OpenAPI schema at "
            "/docs and a web page at /. Uses the Ray cluster in RAY_ADDRESS, or starts a "
            "local Ray. Runs until Ctrl-C, then shuts the service down: Serve itself when "
            "this command started it, else only its own application (other applications "
            "on a running Serve keep running)."
        ),
    )
    p.add_argument("--model", help="registry URI or artifact folder (default: serve.model_uri)")
    # Defaults live in ServeConfig (avarnet/config.py); every serve.* setting is also a
    # key=value override here (serve.max_batch_size=8, serve.classifier_cpus=0.3, ...).
    d = ServeConfig()
    p.add_argument("--host", help=f"address to listen on (serve.host, default {d.host})")
    p.add_argument("--port", type=int, help=f"HTTP port (serve.port, default {d.port})")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the project's store)")
    p.add_argument(
        "--max-upload-mb",
        type=float,
        help=f"larger uploads get 413 (serve.max_upload_mb, default {d.max_upload_mb:g})",
    )
    p.add_argument(
        "--encoder-max-replicas",
        type=int,
        help=f"autoscaling ceiling (serve.encoder_max_replicas, default {d.encoder_max_replicas})",
    )
    p.add_argument(
        "--gpus-per-encoder",
        type=float,
        help=f"GPUs per encoder replica (serve.encoder_gpus, default {d.encoder_gpus:g})",
    )
    placement = add_placement_args(p, "encoder", "classifier")
    add_config_args(p)
    p.epilog = "Every serve.* setting (avarnet/config.py, ServeConfig) is a key=value override."
    p.set_defaults(func=_run_serve, log_dir=config_log_dir, placement=placement)


def _run_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from glue.runtime import ray_session
    from serve.deploy import (
        APP_NAME,
        app_args,
        deploy,
        refuse_other_address,
        remove,
        replica_counts,
        shutdown,
    )

    cfg = load_cfg(
        args,
        flag_overrides(
            args,
            (
                ("model", "serve.model_uri"),
                ("host", "serve.host"),
                ("port", "serve.port"),
                ("max_upload_mb", "serve.max_upload_mb"),
                ("encoder_max_replicas", "serve.encoder_max_replicas"),
                ("gpus_per_encoder", "serve.encoder_gpus"),
                *args.placement,
            ),
        ),
    )
    build_args = app_args(cfg, args.tracking_uri)
    stop = threading.Event()
    state = {"serving": False}

    def on_signal(signum, frame):
        # While serving: the first Ctrl-C (or SIGTERM) stops waiting and shuts down.
        # While starting, or a second Ctrl-C during the shutdown: interrupt.
        if state["serving"] and not stop.is_set():
            stop.set()
        else:
            raise KeyboardInterrupt

    with ray_session():
        # After ray.init, which installs a SIGTERM handler of its own.
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        # Serve already running elsewhere: refused before the `finally` below, which
        # would shut that service down.
        serve_was_running = refuse_other_address(cfg.serve.host, cfg.serve.port)
        # Serve already running here (a cluster's, the pipeline's service): this process
        # deploys its application beside the others and removes only that one at the end.
        if serve_was_running and replica_counts(APP_NAME):  # {} when there is no such app
            console.say(f"avarnet: replacing the running Serve application {APP_NAME!r}")
        try:
            url = deploy(build_args, host=cfg.serve.host, port=cfg.serve.port)
            state["serving"] = True
            say = console.out()
            print(
                f"avarnet: serving {cfg.serve.model_uri} at {url}/ (API docs: {url}/docs)", file=say
            )
            print("avarnet: press Ctrl-C to stop", file=say, flush=True)
            while not stop.wait(1.0):
                pass
        finally:
            if serve_was_running:
                console.say(
                    f"avarnet: removing the Serve application {APP_NAME!r} (Serve and its "
                    "other applications keep running)"
                )
                remove()
            else:
                console.say("avarnet: shutting the service down")
                shutdown()
    return 0


def add_score(sub: SubParsers) -> None:
    p = sub.add_parser(
        "score",
        help="score a video clip with a running service (avarnet serve)",
        description=(
            "Upload FILE to a running scoring service (POST /v1/score) and print the "
            "predicted class, the top probabilities and the per-segment anomaly timeline."
        ),
    )
    p.add_argument("file", help="video file to score")
    p.add_argument(
        "--url", default="http://127.0.0.1:8000", help="service URL (default %(default)s)"
    )
    p.add_argument("--timeout-s", type=float, default=300.0, help="request timeout (default 300)")
    p.add_argument("--json", action="store_true", help="print the service's JSON answer")
    p.set_defaults(func=_run_score)


def format_score(r: dict) -> str:
    top = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:3]
    lines = [
        f"label: {r['label']}   (model {r['model']['name']} v{r['model']['version']}, "
        f"{r['duration_s']:.1f} s, audio: {'yes' if r['has_audio'] else 'none'}, "
        f"{r['timings_ms']['total']:.0f} ms)",
        "top:   " + ", ".join(f"{k} {v:.3f}" for k, v in top),
        "anomaly timeline (per segment):",
    ]
    blocks = " ▁▂▃▄▅▆▇█"
    lines.append(
        "  "
        + "".join(blocks[min(8, int(s["anomaly_score"] * 8.999))] for s in r["segments"])
        + f"  max {max((s['anomaly_score'] for s in r['segments']), default=0):.3f}"
    )
    return "\n".join(lines)


def _run_score(args: argparse.Namespace) -> int:
    from serve.client import ScoreError, score_file

    try:
        result = score_file(args.url, args.file, timeout_s=args.timeout_s)
    except ScoreError as err:
        raise CliError(str(err)) from None
    emit(args, result, format_score)
    return 0
