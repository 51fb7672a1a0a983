"""Connecting to Ray: a local instance on a laptop, the cluster inside a Ray job."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from glue import private_api

# Environment of every Ray worker process we start:
# - Ray Data operators and Ray Train's split coordinator would otherwise print per-operator
#   progress bars into the driver's log (our own progress is a tqdm bar per stage);
# - a Ray Train worker's ``report`` waits until the controller drains its one-slot result
#   queue, which it does on every health check (default every 2 s): with sub-second epochs
#   that poll, not the training, sets the pace. 0.2 s makes it ~0.1 s of waiting per epoch.
WORKER_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
}


_FROM_ENV = object()


def worker_env() -> dict[str, str]:
    """The part of :data:`WORKER_ENV` the driver's own environment does not already set.

    Inside ``ray job submit`` the job's ``runtime_env`` env vars are in the driver's
    environment too; Ray refuses a ``ray.init(runtime_env=...)`` that sets one of them again,
    and the user's value wins anyway."""
    return {k: v for k, v in WORKER_ENV.items() if k not in os.environ}


def init_kwargs(num_cpus: int | None = None, address: str | None | object = _FROM_ENV) -> dict:
    """``ray.init`` arguments: the cluster at ``address`` (default ``RAY_ADDRESS``, set
    inside a Ray job), or a new local Ray when there is none.

    Either way every worker of this job gets :data:`WORKER_ENV`: on a cluster somebody else
    started (a Ray job) the job's runtime env is merged with ours by ``ray.init``, so the
    user needs no ``--runtime-env-json`` for it."""
    import ray

    if address is _FROM_ENV:
        address = os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"logging_config": ray.LoggingConfig(log_level="WARNING")}
    env_vars = worker_env()
    if address:
        # Inside `ray job submit` the job's runtime_env (working_dir) already applies.
        kwargs["address"] = address
        if env_vars:
            kwargs["runtime_env"] = {"env_vars": env_vars}
        return kwargs
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    # Workers import the project from the driver's working directory.
    kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": project_root(), **env_vars}}
    return kwargs


def in_ray_job() -> bool:
    """Whether this process is the driver of a job submitted with ``ray job submit``."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def check_durable_path(path: str | os.PathLike, what: str) -> None:
    """Refuse a relative output path inside a Ray job: it would point into the job's
    temporary copy of the working directory, deleted with the job's session."""
    from avarnet.config import ConfigError

    if in_ray_job() and not os.path.isabs(os.fspath(path)):
        raise ConfigError(
            f"{what}={os.fspath(path)!r} is relative: inside a Ray job it would land in the "
            "job's temporary copy of the working directory and be deleted with it; pass an "
            f"absolute path on storage every node can reach (e.g. {what}=/mnt/shared/avarnet)"
        )


def check_job_input(path: str | os.PathLike, what: str) -> None:
    """Inside a Ray job, a relative input that is not there is read from the job's copy
    of the working directory (which leaves out what git ignores): say so, instead of a
    bare "no such file"."""
    from avarnet.config import ConfigError

    p = os.fspath(path)
    if in_ray_job() and not os.path.isabs(p) and not os.path.exists(p):
        raise ConfigError(
            f"{what}={p!r} is relative and not in the job's copy of the working directory "
            "(inside a Ray job relative paths are read there, and files git ignores are not "
            f"uploaded); pass an absolute path every node can reach (e.g. {what}=/mnt/data)"
        )


def quiet_driver() -> None:
    """Keep the driver's output to warnings and our own progress bars."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray.train", "ray.tune", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    private_api.quiet_train_report_logger(logging.WARNING)


@contextmanager
def ray_session(num_cpus: int | None = None, quiet: bool = True) -> Iterator[None]:
    """Use the running Ray (a test's, or the cluster of a Ray job via ``RAY_ADDRESS``), or
    start a local one for the duration of the block and shut it down afterwards."""
    import ray

    from glue.errors import handle_sigterm

    started = False
    if not ray.is_initialized():
        ray.init(**init_kwargs(num_cpus))
        started = True
        handle_sigterm()  # ray.init replaced it with a plain sys.exit
    if quiet:
        quiet_driver()
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def label_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a node with ``labels`` satisfies a Ray label ``selector`` (values ``v``,
    ``!v``, ``in(a,b)``, ``!in(a,b)``), as Ray's scheduler reads it."""
    for key, want in selector.items():
        have = labels.get(key)
        negate = want.startswith("!")
        want = want[1:] if negate else want
        if want.startswith("in(") and want.endswith(")"):
            allowed = {v.strip() for v in want[3:-1].split(",")}
        else:
            allowed = {want}
        if (have in allowed) == negate:
            return False
    return True


def unplaceable(
    selector: dict[str, str] | None, resources: dict[str, float], nodes: list[dict] | None = None
) -> str | None:
    """Why no node of the running cluster can take work that needs ``resources`` on nodes
    with the labels ``selector`` (None when one can, or when Ray is not initialised).
    ``nodes``: ``ray.nodes()``. An autoscaling cluster may still add such a node, so callers
    warn rather than refuse."""
    if nodes is None:
        import ray

        if not ray.is_initialized():
            return None
        nodes = ray.nodes()
    live = [n for n in nodes if n.get("Alive", True)]
    labelled = [n for n in live if label_matches(selector or {}, n.get("Labels") or {})]
    if not labelled:
        have = sorted(
            {
                f"{k}={v}"
                for n in live
                for k, v in (n.get("Labels") or {}).items()
                if not k.startswith("ray.io/")
            }
        )
        return (
            f"no node has the labels {format_labels(selector or {})} "
            f"(labels in the cluster: {', '.join(have) or 'none'})"
        )
    for n in labelled:
        total = n.get("Resources", {})
        if all(float(total.get(k, 0.0)) + 1e-9 >= v for k, v in resources.items() if v):
            return None
    want = ", ".join(f"{v:g} {k}" for k, v in resources.items() if v)
    where = f"with the labels {format_labels(selector)}" if selector else "in the cluster"
    return f"no node {where} has {want}"


def pool_leaves_no_room(
    actors: int,
    actor_selector: dict[str, str] | None,
    actor_resources: dict[str, float],
    task_selector: dict[str, str] | None,
    task_resources: dict[str, float],
    nodes: list[dict] | None = None,
) -> str | None:
    """Why a pool of ``actors`` long-lived actors, placed first, would leave no node where
    one task of ``task_resources`` fits (the tasks feed the actors: the pipeline would wait
    forever, with nothing pending in ``ray status``); None when it fits or Ray is not up.

    Actors are packed onto the nodes their selector allows, most room first, as Ray's
    scheduler would at best; ``nodes``: ``ray.nodes()``."""
    if nodes is None:
        import ray

        if not ray.is_initialized():
            return None
        nodes = ray.nodes()
    live = [n for n in nodes if n.get("Alive", True)]
    free = [dict(n.get("Resources", {})) for n in live]
    labels = [n.get("Labels") or {} for n in live]

    def fits(i: int, want: dict[str, float]) -> bool:
        return all(float(free[i].get(k, 0.0)) + 1e-9 >= v for k, v in want.items() if v)

    for _ in range(actors):
        ok = [i for i in range(len(live)) if label_matches(actor_selector or {}, labels[i])]
        ok = [i for i in ok if fits(i, actor_resources)]
        if not ok:
            return None  # the pool itself does not fit: unplaceable() says so
        i = max(ok, key=lambda j: float(free[j].get("CPU", 0.0)))
        for k, v in actor_resources.items():
            free[i][k] = float(free[i].get(k, 0.0)) - v
    if any(
        label_matches(task_selector or {}, labels[i]) and fits(i, task_resources)
        for i in range(len(live))
    ):
        return None
    want = ", ".join(f"{v:g} {k}" for k, v in actor_resources.items() if v)
    return f"{actors} actors of {want} take what every node that may run the tasks has"


def warn_if_unplaceable(
    what: str,
    selector: dict[str, str] | None,
    resources: dict[str, float],
    nodes: list[dict] | None = None,
) -> None:
    """Say (one line) that ``what`` will wait until a node that fits joins the cluster
    (``nodes``: ``ray.nodes()``, read here when not given)."""
    why = unplaceable(selector, resources, nodes)
    if why:
        from glue import console

        console.say(f"avarnet: warning: {what} wait until a node that fits joins: {why}")


def format_labels(selector: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in selector.items()) or "(any)"


def remove_placement_groups(pg_ids: list[str]) -> None:
    """Remove placement groups by their hex ids (``ray.util.placement_group_table`` keys)."""
    from ray.util import remove_placement_group

    for pg_id in pg_ids:
        remove_placement_group(private_api.placement_group_from_hex(pg_id))


def project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
