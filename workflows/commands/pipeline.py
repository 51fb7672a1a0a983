"""``avarnet pipeline``: the whole workflow, data to serve."""

from __future__ import annotations

from workflows.commands._common import SubParsers


def add(sub: SubParsers) -> None:
    from workflows import pipeline

    p = sub.add_parser(
        "pipeline",
        help="the whole workflow: data -> extract -> train -> tune -> serve",
        description=pipeline.DESCRIPTION,
    )
    pipeline.add_arguments(p)
    p.set_defaults(func=pipeline.run_from_args)
