"""What every verb of the ``avarnet`` command line shares: printing results (``--json``:
exactly one JSON document on stdout), one-line errors and warnings, progress bars, and
the configuration flags (``--config FILE`` plus ``section.key=value`` overrides)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from glue import console, private_api

SubParsers = private_api.SubParsersAction  # argparse's, which has no public name


def emit(args: argparse.Namespace, result: dict, human: Callable[[dict], str]) -> None:
    """Print ``result``: one JSON document with ``--json``, else ``human(result)``."""
    if getattr(args, "json", False):
        print(json.dumps(result, default=str), file=console.out(), flush=True)
    else:
        print(human(result), file=console.out(), flush=True)


def say_error(msg: str) -> None:
    console.say(f"avarnet: error: {msg}")


def say_warning(msg: str) -> None:
    console.say(f"avarnet: warning: {msg}")


def progress_callback(desc: str):
    """A progress callback ``cb(done, total)`` drawing a bar on stderr."""
    bar: dict = {}

    def cb(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = console.progress_bar(total, desc, "clip")
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()

    return cb


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (default: built-in defaults)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.lr=3e-4 model.num_stages=2",
    )


# Where each kind of work runs (Ray node labels, see the README's cluster section):
# flag -> (config key, what runs there).
PLACEMENT = {
    "decode": ("features.decode_labels", "decode tasks"),
    "encode": ("features.encoder_labels", "feature-encoder actors"),
    "train": ("train.worker_labels", "training workers"),
    "encoder": ("serve.encoder_labels", "Serve Encoder replicas"),
    "classifier": ("serve.classifier_labels", "Serve Classifier replicas"),
}


def add_placement_args(p: argparse.ArgumentParser, *kinds: str) -> tuple[tuple[str, str], ...]:
    """``--decode-on``, ``--encode-on``, ... for ``kinds``; returns the (dest, config key)
    pairs for :func:`flag_overrides`."""
    pairs = []
    for kind in kinds:
        key, what = PLACEMENT[kind]
        p.add_argument(
            f"--{kind}-on",
            metavar="LABEL=VALUE[,...]",
            help=f"run {what} only on Ray nodes with these labels ({key}; default: any node)",
        )
        pairs.append((f"{kind}_on", key))
    return tuple(pairs)


def load_cfg(args: argparse.Namespace, extra: list[str]):
    from avarnet.config import load_config

    return load_config(args.config, list(extra) + list(args.overrides or []))


def flag_overrides(args: argparse.Namespace, pairs: tuple[tuple[str, str], ...]) -> list[str]:
    """``key=value`` overrides for the command-line flags that were given."""
    return [
        f"{key}={getattr(args, flag)}" for flag, key in pairs if getattr(args, flag) is not None
    ]


def beside(path: str):
    """Logs of a verb that writes ``path``: ``<parent of path>/logs``."""
    from pathlib import Path

    return Path(path).resolve().parent / "logs"


def config_log_dir(args: argparse.Namespace):
    from pathlib import Path

    return Path(load_cfg(args, []).output_dir).resolve() / "logs"


def tracking_uri_for(cfg, root) -> str:
    from glue.tracking import resolve_tracking_uri

    return resolve_tracking_uri(cfg.tracking, root)


def feature_table_config(args: argparse.Namespace, pairs: tuple[tuple[str, str], ...]):
    """For verbs that read a feature table (``--features``): the table's resolved path,
    the config (outputs beside the table unless ``output_dir=...`` is given; ``pairs``
    map flags to config keys) and the tracking URI."""
    from pathlib import Path

    from glue.runtime import check_durable_path

    check_durable_path(args.features, "--features")
    features = Path(args.features).resolve()
    cfg = load_cfg(args, [f"output_dir={features.parent}", *flag_overrides(args, pairs)])
    return features, cfg, tracking_uri_for(cfg, Path(cfg.output_dir))
