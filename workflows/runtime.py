"""Connecting to Ray: a local instance on a laptop, the cluster inside a Ray job."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ray_session(num_cpus: int | None = None, quiet: bool = True) -> Iterator[None]:
    """Use the running Ray (a test's, or the cluster of a Ray job via ``RAY_ADDRESS``), or
    start a local one for the duration of the block and shut it down afterwards."""
    import ray

    started = False
    if not ray.is_initialized():
        kwargs: dict = {"logging_level": "WARNING", "log_to_driver": True}
        if os.environ.get("RAY_ADDRESS"):
            kwargs["address"] = os.environ["RAY_ADDRESS"]
        elif num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        # Workers import the project from the driver's working directory.
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": _project_root()}}
        if "address" in kwargs:
            kwargs.pop("runtime_env")
        ray.init(**kwargs)
        started = True
    if quiet:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
