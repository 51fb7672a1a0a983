"""Early fusion: per-modality LayerNorm, concatenation, switched-off streams, masks."""

from __future__ import annotations

import pytest
import torch

from avarnet.models.fusion import EarlyFusion


@pytest.mark.parametrize(("mode", "dim"), [("early", 11), ("audio", 6), ("visual", 5)])
def test_output_dim_and_shape(mode, dim):
    fusion = EarlyFusion(6, 5, mode=mode)
    assert fusion.output_dim == dim
    assert fusion(torch.randn(2, 4, 6), torch.randn(2, 4, 5)).shape == (2, 4, dim)


def test_each_modality_is_normalised_then_concatenated():
    fusion = EarlyFusion(6, 5)
    audio, visual = torch.randn(2, 4, 6) * 50 + 3, torch.randn(2, 4, 5) * 0.01
    out = fusion(audio, visual)
    torch.testing.assert_close(out[..., :6], torch.nn.functional.layer_norm(audio, (6,)))
    torch.testing.assert_close(out[..., 6:], torch.nn.functional.layer_norm(visual, (5,)))


def test_missing_audio_is_zeroed_after_normalisation_and_padding_is_zeroed():
    fusion = EarlyFusion(6, 5)
    with torch.no_grad():
        fusion.audio_norm.bias.fill_(1.0)  # a zero *input* would then not give zeros
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = fusion(
        torch.randn(2, 3, 6), torch.randn(2, 3, 5), mask, has_audio=torch.tensor([False, True])
    )
    assert torch.all(out[0, :, :6] == 0)
    assert torch.all(out[0, :2, 6:] != 0)
    assert torch.all(out[1, :, :6] != 0)
    assert torch.all(out[0, 2] == 0)  # padded step


def test_single_modality_modes_ignore_the_other_input():
    audio, visual = torch.randn(2, 4, 6), torch.randn(2, 4, 5)
    a, v = EarlyFusion(6, 5, mode="audio"), EarlyFusion(6, 5, mode="visual")
    assert torch.equal(a(audio, visual), a(audio, torch.randn(2, 4, 5)))
    assert torch.equal(v(audio, visual), v(torch.randn(2, 4, 6), visual))
    assert a.visual_norm is None and v.audio_norm is None


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown fusion mode 'middle'"):
        EarlyFusion(6, 5, mode="middle")
