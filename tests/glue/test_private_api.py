"""Every private name wrapped by :mod:`glue.private_api` still exists in the installed
versions. Unit tier: modules are imported, Ray is not started.

A failure here means an upgrade removed or changed a private API: fix the wrapper in
glue/private_api.py (or switch it to the public API its comment names)."""

from __future__ import annotations

import argparse
import importlib
import logging

import pytest

from glue import private_api

FIX = "fix glue/private_api.py (its comment names the public API to switch to)"


def test_importing_it_starts_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, glue.private_api; "
        "print(sorted(m for m in ('ray', 'starlette', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_argparse_subparsers_action_is_what_add_subparsers_returns():
    assert isinstance(getattr(argparse, "_SubParsersAction", None), type), (
        f"argparse._SubParsersAction is gone in this Python: {FIX}"
    )
    sub = argparse.ArgumentParser().add_subparsers()
    assert isinstance(sub, private_api.SubParsersAction), (
        f"add_subparsers() no longer returns argparse._SubParsersAction: {FIX}"
    )
    assert callable(sub.add_parser)


def test_ray_train_report_logger_module_exists():
    name = private_api.TRAIN_REPORT_LOGGER_MODULE
    try:
        module = importlib.import_module(name)
    except ImportError as err:  # pragma: no cover - only on a Ray upgrade
        pytest.fail(f"{name} is gone ({err}): {FIX}")
    logger = getattr(module, "logger", None)
    assert isinstance(logger, logging.Logger) and logger.name == module.__file__, (
        f"{name}.logger is no longer getLogger(__file__): {FIX}"
    )


def test_quiet_train_report_logger_raises_that_loggers_level():
    module = importlib.import_module(private_api.TRAIN_REPORT_LOGGER_MODULE)
    logger = logging.getLogger(module.__file__)
    before = logger.level
    try:
        assert private_api.quiet_train_report_logger(logging.ERROR) is True
        assert logger.level == logging.ERROR
    finally:
        logger.setLevel(before)


def test_ray_placement_group_id_from_hex():
    try:
        from ray._raylet import PlacementGroupID
    except ImportError as err:  # pragma: no cover - only on a Ray upgrade
        pytest.fail(f"ray._raylet.PlacementGroupID is gone ({err}): {FIX}")
    assert callable(getattr(PlacementGroupID, "from_hex", None)), (
        f"ray._raylet.PlacementGroupID.from_hex is gone: {FIX}"
    )
    pg_id = "ab" * PlacementGroupID.size()
    pg = private_api.placement_group_from_hex(pg_id)
    from ray.util.placement_group import PlacementGroup

    assert isinstance(pg, PlacementGroup)
    assert pg.id.hex() == pg_id, f"PlacementGroup(PlacementGroupID.from_hex(...)) changed: {FIX}"


def test_ray_tune_result_grid_keeps_its_experiment_analysis():
    """A real ResultGrid over a stand-in analysis: the wrapper finds its trials, and a
    Tune Trial still carries the status and id that ``tune.search`` reads."""
    import types

    from ray.tune import ResultGrid
    from ray.tune.experiment import Trial

    analysis = types.SimpleNamespace(trials=[], trial_dataframes={})
    grid = ResultGrid(analysis)
    assert getattr(grid, "_experiment_analysis", None) is analysis, (
        f"ray.tune.ResultGrid no longer keeps ._experiment_analysis: {FIX}"
    )
    trial = Trial("__fake", stub=True, trial_id="t0")
    analysis.trials.append(trial)  # after construction: a stub trial has no storage
    assert private_api.tune_trials(grid) == [trial]
    assert (trial.status, trial.trial_id) == ("PENDING", "t0"), (
        f"ray.tune.experiment.Trial lost .status/.trial_id: {FIX}"
    )


def test_ray_serve_global_client_and_its_http_config():
    """Without Serve running the wrapper answers None (Ray is not started); the client
    class still exposes ``http_config``, Serve's ``HTTPOptions``."""
    import inspect

    from ray.serve import context

    fn = getattr(context, "_get_global_client", None)
    assert callable(fn), f"ray.serve.context._get_global_client is gone: {FIX}"
    assert "raise_if_no_controller_running" in inspect.signature(fn).parameters, (
        f"_get_global_client lost raise_if_no_controller_running: {FIX}"
    )
    from ray.serve._private.client import ServeControllerClient

    assert isinstance(getattr(ServeControllerClient, "http_config", None), property), (
        f"ServeControllerClient.http_config is gone: {FIX}"
    )


def test_no_private_ray_or_argparse_names_outside_private_api():
    """The call sites go through glue.private_api; nothing else reaches in."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    pattern = re.compile(
        r"ray\._raylet|ray\._private|\._internal\b|v2\._internal|_experiment_analysis"
        r"|argparse\._[A-Za-z]|serve\._private|_get_global_client"
    )
    found = []
    for pkg in ("avarnet", "glue", "workflows", "tune", "serve", "benchmarks"):
        for path in (root / pkg).rglob("*.py"):
            if path.name == "private_api.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not found, "private names outside glue/private_api.py:\n" + "\n".join(found)
