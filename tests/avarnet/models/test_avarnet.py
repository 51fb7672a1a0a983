"""AVAR-Net: output contract, masks, ablation modes, modality dropout, anomaly scores,
rebuilding from its config, golden values."""

from __future__ import annotations

import json

import pytest
import torch

from avarnet.models import AVARNet, create_model, pool_clip_logits, segment_anomaly_scores

DA, DV, C = 6, 5, 3


def tiny(**kwargs) -> AVARNet:
    kwargs = {"num_stages": 2, "num_layers": 3, "num_filters": 8, **kwargs}
    return create_model("avarnet_tiny", audio_dim=DA, visual_dim=DV, num_classes=C, **kwargs)


def padded(lengths, seed=0):
    """Random clips and their padded batch (garbage on padded steps)."""
    g = torch.Generator().manual_seed(seed)
    clips = [(torch.randn(n, DA, generator=g), torch.randn(n, DV, generator=g)) for n in lengths]
    t = max(lengths)
    audio = torch.randn(len(lengths), t, DA, generator=g) * 10
    visual = torch.randn(len(lengths), t, DV, generator=g) * 10
    mask = torch.zeros(len(lengths), t, dtype=torch.bool)
    for i, (a, v) in enumerate(clips):
        audio[i, : len(a)], visual[i, : len(v)], mask[i, : len(a)] = a, v, True
    return clips, audio, visual, mask


@pytest.mark.parametrize("fusion", ["early", "audio", "visual", "late"])
@pytest.mark.parametrize("pooling", ["mean", "topk"])
def test_output_shapes(fusion, pooling):
    model = tiny(fusion=fusion, pooling=pooling, num_stages=3).eval()
    _, audio, visual, mask = padded([9, 4])
    out = model(audio, visual, mask, torch.tensor([True, False]))
    assert out["stage_logits"].shape == (3, 2, C, 9)
    assert out["stage_clip_logits"].shape == (3, 2, C)
    assert out["segment_logits"].shape == (2, 9, C)
    assert out["clip_logits"].shape == (2, C)
    assert torch.equal(out["segment_logits"], out["stage_logits"][-1].transpose(1, 2))
    assert torch.equal(out["clip_logits"], out["stage_clip_logits"][-1])
    assert len(model.tcns) == (2 if fusion == "late" else 1)


@pytest.mark.parametrize(("fusion", "pooling"), [("early", "mean"), ("late", "topk")])
def test_padded_batch_equals_each_clip_alone(fusion, pooling):
    torch.manual_seed(0)
    model = tiny(fusion=fusion, pooling=pooling, modality_dropout=0.5).eval()
    lengths, has_audio = [40, 17, 5], torch.tensor([True, False, True])
    clips, audio, visual, mask = padded(lengths)
    out = model(audio, visual, mask, has_audio)
    for i, (a, v) in enumerate(clips):
        alone = model(a[None], v[None], None, has_audio[i : i + 1])
        n = len(a)
        torch.testing.assert_close(
            out["segment_logits"][i, :n], alone["segment_logits"][0], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            out["stage_clip_logits"][:, i], alone["stage_clip_logits"][:, 0], atol=1e-5, rtol=0
        )


def test_pooling_mean_and_topk_by_hand():
    logits = torch.tensor([[[1.0, 5.0, 3.0, 100.0]]])  # (B=1, C=1, T=4), last step padded
    mask = torch.tensor([[True, True, True, False]])
    assert pool_clip_logits(logits, mask, pooling="mean").item() == pytest.approx(3.0)
    assert pool_clip_logits(logits, mask, pooling="topk").item() == 5.0  # k = 3 // 16 + 1 = 1
    assert pool_clip_logits(logits, mask, pooling="topk", topk_divisor=2).item() == 4.0  # k = 2
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_clip_logits(logits, mask, pooling="max")


def test_audio_mode_ignores_visual_and_visual_mode_ignores_audio():
    _, audio, visual, mask = padded([8, 6])
    has_audio = torch.tensor([True, True])
    a, v = tiny(fusion="audio").eval(), tiny(fusion="visual").eval()
    ref_a, ref_v = a(audio, visual, mask, has_audio), v(audio, visual, mask, has_audio)
    other_a = a(audio, torch.randn_like(visual), mask, has_audio)
    other_v = v(torch.randn_like(audio), visual, mask, torch.tensor([False, False]))
    assert torch.equal(ref_a["segment_logits"], other_a["segment_logits"])
    assert torch.equal(ref_v["segment_logits"], other_v["segment_logits"])
    assert not torch.equal(
        ref_a["segment_logits"], a(audio * 2 + 1, visual, mask)["segment_logits"]
    )


def test_missing_audio_track_ignores_the_audio_values():
    model = tiny().eval()
    _, audio, visual, mask = padded([7, 7])
    no_audio = torch.tensor([False, False])
    out = model(audio, visual, mask, no_audio)["clip_logits"]
    assert torch.equal(out, model(torch.randn_like(audio), visual, mask, no_audio)["clip_logits"])
    assert not torch.allclose(out, model(audio, visual, mask)["clip_logits"])


def test_modality_dropout_is_inactive_in_eval_mode():
    torch.manual_seed(0)
    model = tiny(modality_dropout=1.0, dropout=0.0).eval()
    _, audio, visual, mask = padded([8, 5])
    first = model(audio, visual, mask)["segment_logits"]
    model.modality_dropout = 0.0
    assert torch.equal(first, model(audio, visual, mask)["segment_logits"])


def test_modality_dropout_drops_one_stream_never_both():
    """Training with p=1 (and no feature dropout): every clip loses exactly one stream;
    a clip without audio keeps its visual stream."""
    torch.manual_seed(0)
    # LayerNorm only: batch statistics would make training and evaluation outputs differ.
    model = tiny(modality_dropout=1.0, dropout=0.0, fusion_norm="layer")
    _, audio, visual, mask = padded([6] * 32)
    has_audio = torch.ones(32, dtype=torch.bool)
    has_audio[:8] = False
    model.eval()
    audio_off = model(audio, visual, mask, torch.zeros(32, dtype=torch.bool))["clip_logits"]
    # At initialisation LayerNorm has zero bias, so zero visual input == a dropped visual stream.
    visual_off = model(audio, torch.zeros_like(visual), mask, has_audio)["clip_logits"]
    model.train()
    out = model(audio, visual, mask, has_audio)["clip_logits"]
    dropped_audio = torch.isclose(out, audio_off, atol=1e-6).all(-1)
    dropped_visual = torch.isclose(out, visual_off, atol=1e-6).all(-1)
    assert torch.all(dropped_audio ^ dropped_visual)
    assert torch.all(dropped_audio[:8])  # no audio track: the visual stream is never dropped
    assert dropped_audio[8:].any() and dropped_visual[8:].any()


def test_anomaly_scores():
    model = tiny(normal_index=1).eval()
    _, audio, visual, mask = padded([8, 5])
    seg = model(audio, visual, mask)["segment_logits"]
    scores = model.anomaly_scores(seg, mask)
    assert scores.shape == (2, 8)
    torch.testing.assert_close(scores[0], 1 - seg[0].softmax(-1)[:, 1])
    assert torch.all(scores[1, 5:] == 0)
    # Multi-label with a normal class: the most likely non-normal class, whatever the
    # normal logit says (top-k MIL lowers it on every segment of an anomalous video).
    multi = tiny(normal_index=1, multilabel=True)
    torch.testing.assert_close(
        multi.anomaly_scores(seg), torch.maximum(seg[..., 0], seg[..., 2]).sigmoid()
    )
    logits = torch.tensor([[[2.0, -5.0, -3.0], [-4.0, -5.0, -1.0], [-6.0, 3.0, -6.0]]])
    got = segment_anomaly_scores(logits, normal_index=1, multilabel=True)
    torch.testing.assert_close(got, torch.tensor([[2.0, -1.0, -6.0]]).sigmoid())
    # (a low normal logit alone does not make a segment anomalous)
    assert got[0, 1] < 0.5 < 1 - torch.sigmoid(torch.tensor(-5.0))
    masked = segment_anomaly_scores(
        logits, normal_index=1, multilabel=True, mask=torch.tensor([[True, True, False]])
    )
    assert masked[0, 2] == 0
    alone = segment_anomaly_scores(logits[..., 1:2], normal_index=0, multilabel=True)
    torch.testing.assert_close(alone, 1 - logits[..., 1:2].sigmoid()[..., 0])
    torch.testing.assert_close(tiny().anomaly_scores(seg), seg.softmax(-1).max(-1).values)


def test_config_rebuilds_the_same_model():
    model = tiny(fusion="late", pooling="topk", normal_index=2).eval()
    config = json.loads(json.dumps(model.config))  # JSON round trip, as in an artifact
    assert config["name"] == "avarnet_tiny"
    again = create_model(config["name"], **config["kwargs"]).eval()
    again.load_state_dict(model.state_dict())
    _, audio, visual, mask = padded([8, 5])
    assert torch.equal(
        model(audio, visual, mask)["clip_logits"], again(audio, visual, mask)["clip_logits"]
    )
    assert again.init_kwargs == model.init_kwargs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fusion": "middle"}, "unknown fusion"),
        ({"pooling": "max"}, "unknown pooling"),
        ({"normal_index": 3}, "normal_index"),
        ({"modality_dropout": 1.5}, "modality_dropout"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


# Computed once with torch 2.14 (CPU).
# avarnet_tiny: 2 x 3 x 32, fusion norm layer+batch (running statistics at initialisation)
GOLDEN_CLIP = [-0.006194, -0.071992, -0.268]
GOLDEN_SEGMENTS_0_AND_7 = [[-0.007835, -0.177545, -0.267902], [-0.028752, 0.037759, -0.257114]]


def test_golden_values():
    """Guards against accidental changes to the architecture or its initialisation."""
    torch.manual_seed(0)
    model = create_model("avarnet_tiny", audio_dim=4, visual_dim=3, num_classes=3).eval()
    steps = torch.arange(8 * 7, dtype=torch.float32)
    features = torch.sin(steps * 0.31).reshape(1, 8, 7)
    out = model(features[..., :4], features[..., 4:])
    torch.testing.assert_close(out["clip_logits"][0], torch.tensor(GOLDEN_CLIP), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        out["segment_logits"][0, [0, 7]], torch.tensor(GOLDEN_SEGMENTS_0_AND_7), atol=1e-4, rtol=0
    )


def test_layer_batch_norm_standardises_valid_steps_and_keeps_padding_out():
    """``fusion_norm="layer+batch"``: in training every feature has zero mean and unit
    variance over the batch's valid steps; padded steps neither count nor change; at
    evaluation (running statistics) a padded batch gives each clip's own result."""
    torch.manual_seed(0)
    model = tiny(fusion_norm="layer+batch")
    _, audio, visual, mask = padded([8, 5, 3])
    fused = model.fusions[0](audio * 5 + 2, visual, mask)
    valid = fused[mask]
    torch.testing.assert_close(valid.mean(0), torch.zeros(DA + DV), atol=1e-5, rtol=0)
    torch.testing.assert_close(valid.var(0, unbiased=False), torch.ones(DA + DV), atol=1e-3, rtol=0)
    assert torch.all(fused[~mask] == 0)
    for _ in range(3):  # running statistics
        model(audio, visual, mask)
    model.eval()
    batch = model(audio, visual, mask)["clip_logits"]
    for i, n in enumerate([8, 5, 3]):
        alone = model(audio[i : i + 1, :n], visual[i : i + 1, :n])["clip_logits"]
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=1e-4)
    model.train()  # one valid step has no batch statistics: the running ones are used
    one = model(audio[:1, :1], visual[:1, :1])["clip_logits"]
    assert torch.isfinite(one).all()
