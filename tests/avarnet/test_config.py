"""Config: frozen dataclasses from YAML, unknown keys rejected, overrides, round-trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from avarnet.config import Config, ConfigError, apply_overrides, load_config, save_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "workflows" / "configs").glob("*.yaml"))


def test_defaults_are_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_unknown_key_is_rejected_with_the_known_ones(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epochz.*known keys of train: epochs"):
        load_config(p)


def test_wrong_type_is_rejected(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        load_config(p)


def test_overrides_parse_yaml_values():
    cfg = apply_overrides(
        Config(),
        [
            "train.lr=3e-4",
            "model.num_stages=2",
            "data.annotations=null",
            "data.split_fractions=[0.8, 0.1, 0.1]",
            "output_dir=/tmp/x",
        ],
    )
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.num_stages == 2
    assert cfg.data.annotations is None
    assert cfg.data.split_fractions == (0.8, 0.1, 0.1)
    assert cfg.output_dir == "/tmp/x"
    # Integers are accepted where floats are expected.
    assert apply_overrides(Config(), ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize("bad", ["train.nope=1", "nosection.x=1", "train=3", "train.epochs"])
def test_bad_overrides_fail_clearly(bad):
    with pytest.raises(ConfigError):
        apply_overrides(Config(), [bad])


def test_resolved_config_round_trips(tmp_path):
    cfg = apply_overrides(Config(), ["train.epochs=7", "features.preset=paper"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg


def test_node_labels_from_yaml_mappings_and_command_line_pairs():
    cfg = load_config(
        None,
        [
            "features.decode_labels=avarnet.io/pool=cpu",
            "features.encoder_labels={avarnet.io/pool: gpu, zone: 'in(a,b)'}",
            "train.worker_labels=avarnet.io/pool=gpu,zone=in(a,b)",
        ],
    )
    assert cfg.features.decode_labels == {"avarnet.io/pool": "cpu"}
    assert cfg.features.encoder_labels == {"avarnet.io/pool": "gpu", "zone": "in(a,b)"}
    assert cfg.train.worker_labels == {"avarnet.io/pool": "gpu", "zone": "in(a,b)"}
    assert load_config(None).serve.encoder_labels == {}  # default: any node
    with pytest.raises(ConfigError, match=r"features.decode_labels: 'cpu' is not of the form"):
        load_config(None, ["features.decode_labels=cpu"])
    with pytest.raises(ConfigError, match=r"train.worker_labels: expected label: value"):
        load_config(None, ["train.worker_labels={pool: null}"])
