"""Shared fixtures: one local Ray instance per test session (2 CPUs), a small generated
benchmark and its tiny-preset feature table, built once and reused."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs for the whole session; stopped at the end (only this one)."""
    import ray

    from glue.runtime import init_kwargs, quiet_driver

    if not ray.is_initialized():
        # Tests always run their own local Ray, whatever RAY_ADDRESS says. With the
        # dashboard: Ray Train's placement-group cleaner needs its state API, or a Tune
        # trial stopped by ASHA leaves its workers' CPUs reserved and the next one waits.
        ray.init(**init_kwargs(num_cpus=2, address=None))
    quiet_driver()
    yield ray
    ray.shutdown()


def _release_leaked_placement_groups() -> list[str]:
    """Remove placement groups still holding resources; returns their ids."""
    from ray.util import placement_group_table

    from glue.runtime import remove_placement_groups

    held = [
        pg_id
        for pg_id, info in placement_group_table().items()
        if info.get("state") in ("CREATED", "PENDING", "RESCHEDULING")
    ]
    remove_placement_groups(held)
    return held


@pytest.fixture(autouse=True)
def _ray_resources_released(request):
    """After a test that used the session's Ray (Serve tests excepted, their module keeps a
    deployment up), wait for its CPUs to come back, so that one test's leftovers (a
    stopped Train run's placement group) cannot starve the next test into a hang."""
    yield
    if "ray_session" not in request.fixturenames or "serve" in request.node.path.parts:
        return
    import ray

    if not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0.0) >= total - 1e-6:
            return
        time.sleep(0.5)
    removed = _release_leaked_placement_groups()
    warnings.warn(
        f"{request.node.nodeid} left {total - ray.available_resources().get('CPU', 0.0):.2f} "
        f"CPU reserved after 30 s; removed placement groups {removed}",
        stacklevel=1,
    )


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory) -> Path:
    """The generated benchmark: 10 classes x 4 clips of 3 s (real MP4 files)."""
    from avarnet.data.synthetic import generate_benchmark

    out = tmp_path_factory.mktemp("bench")
    generate_benchmark(out, clips_per_class=4, seconds=3.0, seed=0, no_audio_fraction=0.1)
    return out


@pytest.fixture(scope="session")
def bench_rows(bench_dir) -> list[dict]:
    from avarnet.data.manifest import read_manifest

    return read_manifest(bench_dir / "manifest.csv").rows


@pytest.fixture(scope="session")
def tiny_spec():
    from avarnet.features.backbones import build_feature_spec

    return build_feature_spec("tiny")


@pytest.fixture(scope="session")
def tiny_features(ray_session, bench_rows, tiny_spec, tmp_path_factory) -> Path:
    """The benchmark's tiny-preset feature table (extracted once with Ray Data)."""
    from workflows.extract import run_extract

    out = tmp_path_factory.mktemp("features")
    summary = run_extract(bench_rows, out, tiny_spec, workers=1, progress=False)
    assert summary.clips_failed == 0, summary.errors
    return out


# The multi-node test cluster: a head that runs no work (as on a real cluster) and two
# worker nodes of one CPU each, one for decoding and one for compute (encoders, training,
# Serve replicas), told apart by their labels.
DECODE_POOL = {"avarnet.io/pool": "decode"}
COMPUTE_POOL = {"avarnet.io/pool": "compute"}


@pytest.fixture(scope="session")
def ray_cluster(request):
    """A real multi-node Ray cluster on this machine (`ray start --head` + two `ray start
    --address=...`, token auth on), started once for the session and shared by the Ray-job
    and multi-node tests; only its own processes are stopped at the end.

    Its tests run last (pytest_collection_modifyitems). When no test after them needs
    the session's local Ray, that one is stopped first: two Rays idling side by side
    cost the 2 cores about a fifth of one."""
    from workflows.local_cluster import cluster

    _stop_local_ray_unless_needed(request)

    # `ray job stop` SIGKILLs a driver 3 s after its SIGTERM by default; the runs are
    # marked KILLED at once either way, but the tests also read the driver's last line.
    with cluster(
        workers=[
            {"name": "cpu1", "num_cpus": 1, "labels": DECODE_POOL},
            {"name": "cpu2", "num_cpus": 1, "labels": COMPUTE_POOL},
        ],
        head_cpus=0,
        env={"RAY_JOB_STOP_WAIT_TIME_S": "60"},
    ) as c:
        yield c


def _stop_local_ray_unless_needed(request) -> None:
    import ray

    if not ray.is_initialized():
        return
    items = request.session.items
    here = items.index(request.node) if request.node in items else 0
    if any(
        "ray_session" in getattr(i, "fixturenames", ())
        and "ray_cluster" not in getattr(i, "fixturenames", ())
        for i in items[here:]
    ):
        return
    from ray import serve

    serve.shutdown()  # the session's Serve tests' service, if it is still up
    ray.shutdown()


@pytest.fixture(scope="session")
def new_store(tmp_path_factory):
    """``new_store(folder)``: the URI of a new, empty MLflow sqlite store at
    ``folder/mlflow.db``. MLflow builds a store's tables with its migrations (2-3 s here);
    the first store is built so, and each one after is a copy of it, as it was empty."""
    import shutil

    from mlflow.tracking import MlflowClient

    template = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()  # runs the migrations

    def make(folder: Path) -> str:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        db = folder / "mlflow.db"
        if not db.exists():
            shutil.copyfile(template, db)
        return f"sqlite:///{db}"

    return make


@pytest.fixture
def tracking_uri(tmp_path, new_store) -> str:
    return new_store(tmp_path)


def pytest_configure(config):
    # Tests never reach a model hub; make transformers/timm fail fast if something tries.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A session started in the background (`make test &`, nohup, a CI step without job
    # control) inherits SIGINT ignored, and so would every process it starts: the
    # Ctrl-C tests would then test nothing (the CLIs rightly keep an inherited SIG_IGN).
    # A handler is reset to the default at exec, so the children get Ctrl-C back too.
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# Fixtures that start Ray (or need it running): a test using any of them is an
# integration test, whatever module it is in.
_RAY_FIXTURES = {
    "ray_session",
    "ray_cluster",
    "tiny_features",
    "trained",
    "service",
    "registered_model",
}


def pytest_collection_modifyitems(config, items):
    """Mark every test that starts Ray, a server or a browser as ``integration``, so that
    ``make test-fast`` (``-m "not integration"``) runs the rest in well under a minute."""
    for item in items:
        if _RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    # The multi-node cluster's tests last: it starts once and stops at the session's end
    # (and the local Ray before it, see ray_cluster).
    items.sort(key=lambda i: "ray_cluster" in getattr(i, "fixturenames", ()))
    # The Serve tests share one deployment (tests/serve/conftest.py `service`), which
    # test_limits.py replaces with its own: it runs after every other Serve test.
    limits = ROOT / "tests" / "serve" / "test_limits.py"
    moved = [i for i in items if i.path == limits]
    if moved:
        rest = [i for i in items if i.path != limits]
        serve_dir = limits.parent
        last = max((k for k, i in enumerate(rest) if serve_dir in i.path.parents), default=-1)
        items[:] = rest[: last + 1] + moved + rest[last + 1 :]


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture(scope="session")
def chromium():
    """Launches Debian's headless Chromium from a Playwright instance: ``chromium(pw)``.
    Skips when it is not installed, fails instead under AVARNET_REQUIRE_BROWSER (make test
    installs it)."""
    import os

    if not os.path.exists(CHROMIUM):
        if os.environ.get("AVARNET_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (make test installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")

    def launch(pw):
        return pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS))

    return launch
