"""workflows.pipeline without Ray: stage hashes, markers (skip, re-run, --force), stage
selection. The data stage is the one stage that runs without Ray; a test checks that it
starts none."""

from __future__ import annotations

import json
import sys

import pytest

from avarnet.config import load_config
from workflows import pipeline as P


def _cfg(tmp_path, *overrides):
    return load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "synth.clips_per_class=1",
            "synth.seconds=1",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            *overrides,
        ],
    )


def _hashes(cfg) -> dict[str, str]:
    return {stage: P._stage_hash(cfg, stage) for stage in P.STAGES}


@pytest.mark.parametrize(
    ("override", "changed"),
    [
        ("synth.seed=7", {"data", "extract", "train", "tune", "serve"}),
        ("features.workers=3", {"extract", "train", "tune", "serve"}),
        ("model.name=avarnet_base", {"train", "tune", "serve"}),
        ("train.epochs=2", {"train", "tune", "serve"}),
        ("tune.trials=9", {"tune", "serve"}),
        ("serve.port=8123", {"serve"}),
        # where work runs, and on how many cores, changes no stage's output
        ("features.encoder_labels=avarnet.io/pool=gpu", set()),
        ("features.decode_cpus=0.5", set()),
        ("train.worker_labels={avarnet.io/pool: gpu}", set()),
        ("train.cpus_per_worker=2", set()),
        ("serve.encoder_labels=avarnet.io/pool=gpu", {"serve"}),
    ],
)
def test_a_stage_hash_changes_only_with_its_config_sections(tmp_path, override, changed):
    base, other = _hashes(_cfg(tmp_path)), _hashes(_cfg(tmp_path, override))
    assert {s for s in P.STAGES if base[s] != other[s]} == changed


def test_stage_hashes_are_stable_and_depend_on_where_outputs_go(tmp_path):
    assert _hashes(_cfg(tmp_path)) == _hashes(_cfg(tmp_path))
    moved = _hashes(_cfg(tmp_path, f"output_dir={tmp_path / 'elsewhere'}"))
    assert all(moved[s] != h for s, h in _hashes(_cfg(tmp_path)).items())
    # Sections no stage depends on (where the MLflow store is) change nothing.
    assert _hashes(_cfg(tmp_path, "tracking.experiment=other")) == _hashes(_cfg(tmp_path))


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def test_data_stage_markers_skip_rerun_and_force(tmp_path):
    # In a whole-suite run an earlier module's session Ray may be up already; the data
    # stage must not start one of its own.
    ray_before = _ray_is_up()
    cfg = _cfg(tmp_path)
    first = P.Pipeline(cfg, progress=False)
    [res] = first.run(["data"])
    assert (res.stage, res.status, res.metric) == ("data", "ran", "10 clips")
    marker = json.loads((first.root / "stages" / "data.json").read_text())
    assert marker["hash"] == P._stage_hash(cfg, "data") and marker["clips"] == 10
    manifest = first.root / "data" / "manifest.csv"
    assert res.outputs == str(manifest) and manifest.is_file()
    assert (first.root / "config.yaml").is_file()
    assert not list(first.root.glob(".data-*"))  # written aside, renamed into place
    assert _ray_is_up() == ray_before  # the data stage starts no Ray

    [again] = P.Pipeline(cfg, progress=False).run(["data"])
    assert (again.status, again.seconds, again.metric) == ("skipped", 0.0, "10 clips")
    mtime = manifest.stat().st_mtime_ns

    # Only the data stage's own sections matter: a training setting does not redo it.
    [same] = P.Pipeline(_cfg(tmp_path, "train.epochs=1"), progress=False).run(["data"])
    assert same.status == "skipped"

    [changed] = P.Pipeline(_cfg(tmp_path, "synth.seed=3"), progress=False).run(["data"])
    assert changed.status == "ran"
    [forced] = P.Pipeline(_cfg(tmp_path, "synth.seed=3"), force=True, progress=False).run(["data"])
    assert forced.status == "ran" and manifest.stat().st_mtime_ns != mtime

    pipe = P.Pipeline(_cfg(tmp_path, "synth.seed=3"), progress=False)
    pipe.run(["data"])
    table = pipe.summary_table().splitlines()
    assert table[0].split() == ["stage", "status", "seconds", "result", "outputs"]
    assert table[1].split()[:4] == ["data", "skipped", "0.0", "10"]


def test_the_serve_stage_is_never_up_to_date(tmp_path):
    pipe = P.Pipeline(_cfg(tmp_path), progress=False)
    pipe._mark("serve", {"url": "http://x"})
    pipe._mark("train", {"model_uri": "models:/avarnet/1"})
    assert pipe._done("serve") is None
    assert pipe._done("train")["model_uri"] == "models:/avarnet/1"
    assert P.Pipeline(pipe.cfg, force=True)._done("train") is None


def test_an_unknown_stage_is_refused_before_anything_runs(tmp_path):
    pipe = P.Pipeline(_cfg(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['deploy'\]; stages: data, extract"):
        pipe.run(["data", "deploy"])
    assert not pipe.root.exists()


def test_the_command_line_says_so_in_one_line_and_exits_2(tmp_path, capsys):
    code = P.main(["--stages", "bogus", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "avarnet: error: unknown stage(s) ['bogus']; stages: data, extract, train, tune, serve"
    ]
