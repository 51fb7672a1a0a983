"""glue/runtime.py: the workers' environment in every case, durable paths in a job."""

from __future__ import annotations

import pytest

from avarnet.config import ConfigError
from glue.runtime import WORKER_ENV, check_durable_path, init_kwargs, project_root


def test_local_ray_gets_the_worker_env_and_the_project_on_pythonpath(monkeypatch):
    for k in WORKER_ENV:
        monkeypatch.delenv(k, raising=False)
    kw = init_kwargs(num_cpus=2, address=None)
    assert kw["num_cpus"] == 2
    assert kw["runtime_env"]["env_vars"] == {"PYTHONPATH": project_root(), **WORKER_ENV}


def test_a_cluster_gets_the_worker_env_too(monkeypatch):
    """Joining a cluster (a Ray job): the env vars travel in ray.init's runtime_env, which
    Ray merges with the job's."""
    for k in WORKER_ENV:
        monkeypatch.delenv(k, raising=False)
    kw = init_kwargs(address="127.0.0.1:6379")
    assert kw["address"] == "127.0.0.1:6379"
    assert kw["runtime_env"] == {"env_vars": WORKER_ENV}


def test_settings_the_user_made_are_not_set_again(monkeypatch):
    """A key the job's runtime env already sets: Ray refuses a second value, the user's
    value wins."""
    key = next(iter(WORKER_ENV))
    monkeypatch.setenv(key, "users-value")
    kw = init_kwargs(address="127.0.0.1:6379")
    assert key not in kw.get("runtime_env", {}).get("env_vars", {})


def test_relative_paths_are_refused_only_inside_a_job(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    check_durable_path("runs/demo", "output_dir")  # fine outside a job
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    check_durable_path("/mnt/shared/run", "output_dir")
    with pytest.raises(ConfigError, match=r"output_dir='runs/demo' is relative.*absolute path"):
        check_durable_path("runs/demo", "output_dir")


def test_label_selectors_read_as_rays_scheduler_reads_them():
    from glue.runtime import label_matches

    node = {"avarnet.io/pool": "gpu", "zone": "b"}
    assert label_matches({}, node)
    assert label_matches({"avarnet.io/pool": "gpu"}, node)
    assert not label_matches({"avarnet.io/pool": "cpu"}, node)
    assert label_matches({"avarnet.io/pool": "!cpu"}, node)
    assert label_matches({"zone": "in(a,b)"}, node) and not label_matches(
        {"zone": "!in(a,b)"}, node
    )
    assert not label_matches({"rack": "r1"}, node)  # a label the node lacks
    assert label_matches({"rack": "!r1"}, node)


def test_work_no_node_can_take_is_named_with_the_labels_there_are():
    from glue.runtime import unplaceable

    nodes = [
        {"Alive": True, "Resources": {"CPU": 1.0}, "Labels": {"avarnet.io/pool": "decode"}},
        {
            "Alive": False,
            "Resources": {"CPU": 8.0, "GPU": 1.0},
            "Labels": {"avarnet.io/pool": "gpu"},
        },
    ]
    assert unplaceable({"avarnet.io/pool": "decode"}, {"CPU": 1.0}, nodes) is None
    assert unplaceable(None, {"CPU": 1.0}, nodes) is None
    why = unplaceable({"avarnet.io/pool": "gpu"}, {"CPU": 1.0}, nodes)  # its node is dead
    assert why == (
        "no node has the labels avarnet.io/pool=gpu (labels in the cluster: avarnet.io/pool=decode)"
    )
    why = unplaceable({"avarnet.io/pool": "decode"}, {"CPU": 1.0, "GPU": 1.0}, nodes)
    assert why == "no node with the labels avarnet.io/pool=decode has 1 CPU, 1 GPU"


def test_an_actor_pool_that_leaves_nothing_for_its_feeding_tasks_is_found():
    """Two one-CPU nodes: two encoder actors of 1 CPU would take both, and the decode
    tasks that feed them could never run (the job waits forever, nothing pending)."""
    from glue.runtime import pool_leaves_no_room

    two = [{"Alive": True, "Resources": {"CPU": 1.0}, "Labels": {}} for _ in range(2)]
    cpu = {"CPU": 1.0}
    assert "2 actors of 1 CPU" in pool_leaves_no_room(2, None, cpu, None, cpu, two)
    assert pool_leaves_no_room(1, None, cpu, None, cpu, two) is None
    assert pool_leaves_no_room(2, None, {"CPU": 0.5}, None, {"CPU": 0.5}, two) is None
    # Encoders on GPU nodes leave the CPU nodes to decoding.
    mixed = [
        {"Alive": True, "Resources": {"CPU": 1.0}, "Labels": {"pool": "cpu"}},
        {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}, "Labels": {"pool": "gpu"}},
    ]
    gpu = {"CPU": 1.0, "GPU": 1.0}
    assert pool_leaves_no_room(1, {"pool": "gpu"}, gpu, {"pool": "cpu"}, cpu, mixed) is None
    assert pool_leaves_no_room(1, {"pool": "gpu"}, gpu, {"pool": "gpu"}, cpu, mixed)


def test_a_missing_relative_input_inside_a_job_says_where_it_was_looked_for(monkeypatch, tmp_path):
    from glue.runtime import check_job_input

    monkeypatch.chdir(tmp_path)
    check_job_input("data", "--data")  # outside a job: the usual "not found" later
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    with pytest.raises(ConfigError, match=r"--data='data' is relative and not in the job's copy"):
        check_job_input("data", "--data")
    (tmp_path / "data").mkdir()
    check_job_input("data", "--data")  # uploaded with the working directory: fine
    check_job_input("/no/such/dir", "--data")  # absolute: the usual message
