"""The ``avarnet`` command line: the product's front door.

Every verb has ``--help``; verbs that produce a result accept ``--json`` and then print
exactly one JSON object on stdout (human-readable progress goes to stderr). Bad input
gives one clear line on stderr and exit status 2, never a traceback.

Each verb is a module of :mod:`workflows.commands`; heavy imports (torch, ray, mlflow)
happen inside the verbs, so ``avarnet --help`` is fast.
"""

from __future__ import annotations

import argparse
import sys

from glue import console
from glue.errors import (
    EXIT_BAD_INPUT,
    CliError,
    handle_sigterm,
    interrupt_name,
    interrupt_status,
    known_errors,
)
from workflows.commands import (
    evaluate,
    extract,
    import_features,
    inspect,
    manifest,
    pipeline,
    predict,
    serve,
    synth,
    train,
    tune,
)
from workflows.commands._common import say_error

__all__ = ["EXIT_BAD_INPUT", "VERBS", "CliError", "build_parser", "main"]

# One line per verb, in the order `avarnet --help` lists them.
VERBS = [
    synth.add,
    manifest.add,
    import_features.add,
    inspect.add,
    extract.add,
    train.add,
    tune.add,
    evaluate.add,
    predict.add,
    serve.add,
    serve.add_score,
    pipeline.add,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avarnet",
        description=(
            "Audio-visual anomaly recognition (AVAR-Net: Wav2Vec2 + MobileViT, early fusion, "
            "multi-stage TCN) as a distributed workflow on Ray."
        ),
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for add in VERBS:
        add(sub)
    for verb in sub.choices.values():
        console.add_verbose_flag(verb)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handle_sigterm()
    verbose = getattr(args, "verbose", False)
    log_dir = getattr(args, "log_dir", None)
    try:
        if log_dir is None:
            return int(args.func(args) or 0)
        with console.capture(log_dir(args), args.verb, verbose=verbose):
            return int(args.func(args) or 0)
    except known_errors() as err:
        say_error(str(err))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:
        say_error(interrupt_name(err) + console.log_hint())
        return interrupt_status(err)
    except Exception as err:
        if verbose:
            raise
        return console.report_failure(err)


if __name__ == "__main__":
    sys.exit(main())
