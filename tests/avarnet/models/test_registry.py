"""The model registry: presets, overrides and its errors."""

from __future__ import annotations

import pytest
from torch import nn

from avarnet.models import AVARNet, create_model, list_models, register_model, registry

DIMS = {"audio_dim": 6, "visual_dim": 5, "num_classes": 3}


def test_presets_are_listed_and_build():
    assert {"avarnet_tiny", "avarnet_base"} <= set(list_models())
    assert list_models() == sorted(list_models())
    tiny = create_model("avarnet_tiny", **DIMS)
    assert isinstance(tiny, AVARNet) and tiny.model_name == "avarnet_tiny"
    assert (tiny.init_kwargs["num_stages"], tiny.init_kwargs["num_layers"]) == (2, 3)
    assert (tiny.init_kwargs["num_filters"], tiny.init_kwargs["dropout"]) == (32, 0.3)
    assert tiny.init_kwargs["fusion_norm"] == "layer+batch" and tiny.receptive_field == 29


def test_base_preset_is_the_ms_tcn_default():
    model = create_model("avarnet_base", audio_dim=768, visual_dim=640, num_classes=10)
    kw = model.init_kwargs
    assert (kw["num_stages"], kw["num_layers"], kw["num_filters"]) == (4, 10, 64)
    assert (kw["kernel_size"], kw["dropout"], kw["fusion"]) == (3, 0.5, "early")
    assert kw["fusion_norm"] == "layer"  # DESIGN.md's per-modality LayerNorm
    assert model.fusions[0].output_dim == 1408
    assert model.receptive_field == 8185


def test_overrides_replace_preset_values():
    model = create_model("avarnet_base", **DIMS, num_stages=2, fusion="late", pooling="topk")
    assert len(model.tcns[0].stages) == 2 and len(model.tcns) == 2
    assert model.pooling == "topk"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(
        ValueError, match="unknown model 'avarnet_huge'.*avarnet_base, avarnet_tiny"
    ):
        create_model("avarnet_huge", **DIMS)


def test_unknown_and_missing_arguments_are_named():
    with pytest.raises(TypeError, match="num_stagez"):
        create_model("avarnet_tiny", **DIMS, num_stagez=3)
    with pytest.raises(TypeError, match="num_classes"):
        create_model("avarnet_tiny", audio_dim=6, visual_dim=5)


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model
    def linear_probe(*, width: int = 4) -> nn.Module:
        return nn.Linear(width, 2)

    assert "linear_probe" in list_models()
    assert create_model("linear_probe", width=7).in_features == 7
    with pytest.raises(ValueError, match="already registered"):
        register_model(linear_probe)
