"""The multi-stage TCN: shapes, receptive field, masks, golden values."""

from __future__ import annotations

import pytest
import torch

from avarnet.models.mstcn import MultiStageTCN, SingleStageTCN, receptive_field


def test_output_shapes_and_padding_is_zero():
    model = MultiStageTCN(7, 4, num_stages=3, num_layers=3, num_filters=8).eval()
    x = torch.randn(2, 7, 15)
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[1, 9:] = False
    out = model(x, mask)
    assert out.shape == (3, 2, 4, 15)
    assert torch.all(out[:, 1, :, 9:] == 0)
    assert model(x).shape == (3, 2, 4, 15)  # no mask: every step valid


def test_receptive_field_formula():
    assert receptive_field(10, 3, 1) == 2047  # one MS-TCN stage: 2 * (2**10 - 1) + 1
    assert receptive_field(10, 3, 4) == 8185
    assert receptive_field(6, 3, 2) == 253
    assert receptive_field(3, 5, 1) == 29
    assert MultiStageTCN(4, 2, num_stages=4, num_layers=10).receptive_field == 8185
    assert SingleStageTCN(4, 2, num_layers=10, num_filters=8).receptive_field == 2047


@pytest.mark.parametrize(("num_stages", "num_layers", "kernel_size"), [(2, 3, 3), (1, 2, 5)])
def test_receptive_field_matches_the_gradient_support(num_stages, num_layers, kernel_size):
    """An output step depends on exactly `receptive_field` input steps, centred on it."""
    torch.manual_seed(0)
    model = MultiStageTCN(
        3, 4, num_stages=num_stages, num_layers=num_layers, num_filters=6, kernel_size=kernel_size
    ).eval()
    with torch.no_grad():  # positive weights and inputs: no ReLU is ever off, no path cancels
        for p in model.parameters():
            p.uniform_(0.01, 0.1)
    rf = model.receptive_field
    t, centre = 2 * rf + 1, rf
    x = torch.rand(1, 3, t, requires_grad=True)
    model(x)[-1, 0, :, centre].sum().backward()
    support = torch.nonzero(x.grad.abs().sum(dim=(0, 1))).flatten()
    half = (rf - 1) // 2
    assert support.tolist() == list(range(centre - half, centre + half + 1))


def test_padded_batch_equals_each_clip_alone():
    torch.manual_seed(1)
    model = MultiStageTCN(5, 3, num_stages=3, num_layers=4, num_filters=8).eval()
    lengths = [20, 7, 13]
    clips = [torch.randn(5, n) for n in lengths]
    x = torch.randn(3, 5, max(lengths)) * 10  # garbage on padded steps must not matter
    mask = torch.zeros(3, max(lengths), dtype=torch.bool)
    for i, c in enumerate(clips):
        x[i, :, : c.shape[1]] = c
        mask[i, : c.shape[1]] = True
    batched = model(x, mask)
    for i, c in enumerate(clips):
        alone = model(c[None])
        torch.testing.assert_close(batched[:, i, :, : c.shape[1]], alone[:, 0], atol=1e-5, rtol=0)


def test_even_kernel_is_refused():
    with pytest.raises(ValueError, match="odd"):
        MultiStageTCN(4, 2, kernel_size=4)


# Computed once with torch 2.14 (CPU); last stage, classes x steps (0, 9).
GOLDEN_LAST_STAGE_STEPS_0_AND_9 = [
    [0.132258, 0.177503],
    [-0.245566, -0.253193],
    [-0.317069, -0.307413],
]
GOLDEN_SUM = -11.910292


def test_golden_values():
    """Guards against accidental changes to the architecture or its initialisation."""
    torch.manual_seed(0)
    model = MultiStageTCN(4, 3, num_stages=2, num_layers=3, num_filters=8).eval()
    x = torch.sin(torch.arange(40, dtype=torch.float32) * 0.37).reshape(1, 4, 10)
    out = model(x)
    expected_last = torch.tensor(GOLDEN_LAST_STAGE_STEPS_0_AND_9)
    torch.testing.assert_close(out[-1, 0, :, [0, 9]], expected_last, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.sum(), torch.tensor(GOLDEN_SUM), atol=1e-4, rtol=0)
