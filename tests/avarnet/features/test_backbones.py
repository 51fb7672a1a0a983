"""Backbones: seeded random weights, and the pretrained loading path on checkpoints saved here.

The pretrained path is the code a user with the Hugging Face hub runs
(``Wav2Vec2Model.from_pretrained``, timm), pointed at a folder / file that the test writes.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from avarnet.features.audio import load_audio_backbone, random_audio_backbone
from avarnet.features.backbones import build_encoders, build_feature_spec
from avarnet.features.spec import FeatureSpec, FeatureSpecMismatch
from avarnet.features.visual import load_visual_backbone


def _abs_sum(model: torch.nn.Module) -> float:
    return sum(
        float(t.detach().double().abs().sum())
        for t in model.state_dict().values()
        if t.is_floating_point()
    )


def test_random_weights_are_a_function_of_the_seed():
    # Golden values: the tiny preset's weights must be the same in every process and every
    # run (a change here silently changes every "tiny" feature table).
    audio, meta = random_audio_backbone("wav2vec2_tiny", seed=0)
    visual, vmeta = load_visual_backbone("mobilevit_xxs", weights="random:seed=0")
    assert _abs_sum(audio) == pytest.approx(4283.351959550433, rel=1e-9)
    assert _abs_sum(visual) == pytest.approx(38290.12035039843, rel=1e-9)
    assert (meta.hidden_size, meta.revision, vmeta.num_features) == (64, "seed=0", 320)
    wide, wmeta = random_audio_backbone("wav2vec2_tiny_c128", seed=0)  # the tiny preset's
    assert _abs_sum(wide) == pytest.approx(18940.337740621733, rel=1e-9)
    assert wmeta.hidden_size == 64 and tuple(wide.config.conv_dim) == (128,) * 7
    state = torch.random.get_rng_state()
    other, _ = random_audio_backbone("wav2vec2_tiny", seed=1)
    assert _abs_sum(other) != _abs_sum(audio)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert not audio.training and not visual.training


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Wav2Vec2 saved with save_pretrained (+ feature-extractor config) and a timm
    MobileViT checkpoint that still has its classifier head."""
    import timm
    from transformers import Wav2Vec2FeatureExtractor

    d = tmp_path_factory.mktemp("weights")
    audio, _ = random_audio_backbone("wav2vec2_tiny", seed=5)
    audio.save_pretrained(d / "w2v")
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=False).save_pretrained(d / "w2v")
    torch.manual_seed(7)
    visual = timm.create_model("mobilevit_xxs", num_classes=10).eval()
    torch.save(visual.state_dict(), d / "mvit.pth")
    return {"dir": d, "audio": audio, "visual": visual}


def test_pretrained_loading_path_reproduces_the_saved_models(saved):
    d = saved["dir"]
    spec = build_feature_spec(
        "tiny",
        audio_backbone=str(d / "w2v"),
        visual_weights=str(d / "mvit.pth"),
        visual_stages=(),  # the model's own pooled output (the paper preset's)
    )
    assert spec.visual_dim == 320
    assert spec.audio_normalize is False  # read from preprocessor_config.json
    assert spec.audio_revision.startswith("sha256:")
    assert spec.visual_revision.startswith("sha256:")
    enc = build_encoders(spec)
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 8000), dtype=np.float32))
    image = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected_a = saved["audio"](wave).last_hidden_state
        expected_v = saved["visual"].forward_head(
            saved["visual"].forward_features(image), pre_logits=True
        )
        assert torch.equal(enc.audio_model(wave).last_hidden_state, expected_a)
        assert torch.equal(enc.visual_model(image), expected_v)


def test_stage_features_are_each_stages_spatial_maximum(saved):
    """The tiny preset's visual features: stages 0, 1 and 2 of MobileViT, each max-pooled
    over space, concatenated (16 + 24 + 48 channels), computed here stage by stage."""
    d = saved["dir"]
    spec = build_feature_spec("tiny", visual_weights=str(d / "mvit.pth"))
    assert (spec.visual_stages, spec.visual_dim) == ((0, 1, 2), 88)
    enc = build_encoders(spec)
    image = torch.rand(3, 3, 64, 64)
    model = saved["visual"]
    with torch.inference_mode():
        x, parts = model.stem(image), []
        for stage in model.stages[:3]:
            x = stage(x)
            parts.append(x.amax(dim=(2, 3)))
        got = enc.visual_model(image)
        assert got.shape == (3, 88)
        torch.testing.assert_close(got, torch.cat(parts, dim=1), rtol=0, atol=1e-6)
    # The spec says which stages; a spec without the field (older tables) reads as ().
    old = spec.to_dict()
    del old["visual_stages"]
    assert FeatureSpec.from_dict(old).visual_stages == ()
    assert FeatureSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="increasing indices in 0..4"):
        build_feature_spec("tiny", visual_stages=(2, 7))
    with pytest.raises(ValueError, match="increasing stage indices"):
        FeatureSpec.from_dict({**old, "visual_stages": [2, 1]})


def test_changed_weights_or_wrong_architecture_are_refused(saved, tmp_path):
    d = saved["dir"]
    folder = tmp_path / "w2v"
    shutil.copytree(d / "w2v", folder)
    spec = build_feature_spec("tiny", audio_backbone=str(folder))
    random_audio_backbone("wav2vec2_tiny", seed=6)[0].save_pretrained(folder)
    with pytest.raises(FeatureSpecMismatch, match="audio_revision"):
        build_encoders(spec)
    with pytest.raises(ValueError, match="not a mobilevit_xs checkpoint"):
        load_visual_backbone("mobilevit_xs", weights=str(d / "mvit.pth"))


def test_hub_weights_fail_with_a_clear_message_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="full-random"):
        load_visual_backbone("mobilevit_xxs", weights="pretrained")
    with pytest.raises(OSError, match="no access to the Hugging Face hub"):
        load_audio_backbone("facebook/wav2vec2-base")
    with pytest.raises(FileNotFoundError, match="not 'pretrained'"):
        load_visual_backbone("mobilevit_xxs", weights="/no/such/file.pth")
