"""Every private Ray and argparse name this project uses, in one place.

Each is wrapped in a small function or alias with the version it was checked against and
the public API to switch to once one exists. ``tests/workflows/test_private_api.py`` fails
loudly, naming the module, when an upgrade removes or changes one of them: fix it here,
not at the call sites.

Starlette: ``request._body`` is no longer used (serve reads ``request.stream()``).
``starlette.formparsers.MultiPartParser`` (serve's streaming upload parser) is
undocumented but not private by name; it is left at its call site.

Importing this module is cheap: ray is imported inside the functions.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

# --- argparse (checked against Python 3.11.7) ----------------------------------------

# The type of ``ArgumentParser.add_subparsers()``'s result, for type hints on the functions
# that register a verb. Python has no public name for it (3.11-3.13); switch to one if
# argparse ever exports it.
SubParsersAction = argparse._SubParsersAction

# --- Ray (checked against ray 2.60.0) ------------------------------------------------

# Module whose file path names Ray Train V2's per-report logger ("Reporting training
# result ..."): ``logging.getLogger(__file__)`` in that module.
TRAIN_REPORT_LOGGER_MODULE = "ray.train.v2._internal.execution.context"


def quiet_train_report_logger(level: int = logging.WARNING) -> bool:
    """Raise the level of Ray Train V2's per-epoch "Reporting training result ..." logger,
    which is named by its source file rather than under ``ray.train``. Returns whether the
    logger was found (False on a Ray version without that module).

    Public API to switch to: none in Ray 2.60 (``ray.train`` has no verbosity setting for
    this logger; ``logging.getLogger("ray.train")`` does not reach it)."""
    import importlib

    try:
        context = importlib.import_module(TRAIN_REPORT_LOGGER_MODULE)
    except ImportError:  # pragma: no cover - another Ray version
        return False
    logging.getLogger(context.__file__).setLevel(level)
    return True


def placement_group_from_hex(pg_id: str) -> Any:
    """The ``ray.util.placement_group.PlacementGroup`` whose hex id ``pg_id`` is a key of
    ``ray.util.placement_group_table()``, for ``ray.util.remove_placement_group``.

    Uses ``ray._raylet.PlacementGroupID``. Public API to switch to: none in Ray 2.60
    (``ray.util.get_placement_group`` looks up by name only, and Ray Train's groups have
    no name); switch when ``ray.util`` can look a group up by id."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    return PlacementGroup(PlacementGroupID.from_hex(pg_id))


def tune_trials(grid: Any) -> list[Any]:
    """The ``ray.tune.experiment.Trial`` behind each result of a ``ray.tune.ResultGrid``,
    in the grid's order (for each trial's status: TERMINATED, ERROR, PENDING, ...).

    Uses ``ResultGrid._experiment_analysis``. Public API to switch to: none in Ray 2.60
    (``ResultGrid`` exposes only counts, ``num_errors``/``num_terminated``, and ``Result``
    carries no status); switch when ``Result`` exposes its trial's status."""
    return list(grid._experiment_analysis.trials)


def running_serve_http_options() -> tuple[str, int] | None:
    """``(host, port)`` of the Ray Serve instance running on the connected cluster, or
    None when Serve is not running. ``serve.start`` keeps a running instance's HTTP options
    (it only logs that new ones are ignored), so a deploy on another port would wait on a
    port nobody serves.

    Uses ``ray.serve.context._get_global_client`` and its ``http_config`` (what
    ``serve.start`` itself compares). Public API to switch to: none in Ray 2.60 in Python
    (``serve.status()`` has no HTTP options; the dashboard's ``/api/serve/applications/``
    has them, but needs the dashboard's address); switch when ``serve.status()`` has them."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    http = client.http_config
    return str(http.host), int(http.port)
