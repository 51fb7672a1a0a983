"""The AVAR-Net loss: per-stage clip classification plus masked MS-TCN smoothing, and a
tiny model that learns a separable problem with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avarnet.models import avarnet_loss, create_model
from avarnet.models.losses import smoothing_loss


def outputs_from(stage_logits, mask):
    m = mask[:, None, :].float()
    return {
        "stage_logits": stage_logits,
        "stage_clip_logits": (stage_logits * m).sum(-1) / m.sum(-1),
    }


def test_classification_part_is_the_sum_over_stages():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 6)
    mask = torch.ones(4, 6, dtype=torch.bool)
    out = outputs_from(logits, mask)
    targets = torch.tensor([0, 4, 2, 1])
    loss, parts = avarnet_loss(out, targets, mask, smoothing_weight=0.0)
    expected = sum(F.cross_entropy(out["stage_clip_logits"][s], targets) for s in range(3))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(parts["classification"], expected)
    assert set(parts) == {"classification", "smoothing", "loss"}


def test_multilabel_uses_bce_on_multi_hot_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    out = outputs_from(logits, mask)
    targets = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]])
    loss, parts = avarnet_loss(out, targets, mask, multilabel=True)
    bce = sum(F.binary_cross_entropy_with_logits(s, targets) for s in out["stage_clip_logits"])
    torch.testing.assert_close(parts["classification"], bce)
    smooth = smoothing_loss(logits, mask, multilabel=True)
    torch.testing.assert_close(loss, bce + 0.15 * smooth)


def test_smoothing_matches_a_loop_over_valid_pairs_and_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 7) * 3
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:] = False  # one step: no pair
    expected = 0.0
    for s in range(2):
        terms = []
        for b in range(3):
            logp = F.log_softmax(logits[s, b], dim=0)  # (C, T)
            for t in range(1, int(mask[b].sum())):
                terms.append(((logp[:, t] - logp[:, t - 1]) ** 2).clamp(0, 16))
        expected += torch.cat(terms).mean()
    torch.testing.assert_close(smoothing_loss(logits, mask), expected)
    garbage = logits.clone()
    garbage[:, 1, :, 4:] = 1e3
    garbage[:, 2, :, 1:] = -1e3
    torch.testing.assert_close(smoothing_loss(garbage, mask), expected)


def test_smoothing_is_zero_when_constant_in_time_or_single_step():
    constant = torch.randn(2, 3, 4, 1).expand(2, 3, 4, 6)
    assert smoothing_loss(constant, torch.ones(3, 6, dtype=torch.bool)).item() == 0.0
    single = torch.randn(2, 3, 4, 1, requires_grad=True)
    value = smoothing_loss(single, torch.ones(3, 1, dtype=torch.bool))
    assert value.item() == 0.0
    value.backward()  # still part of the graph


def test_smoothing_does_not_push_the_previous_step():
    logits = torch.randn(1, 1, 3, 2, requires_grad=True)
    smoothing_loss(logits, torch.ones(1, 2, dtype=torch.bool)).backward()
    assert torch.all(logits.grad[..., 0] == 0) and torch.any(logits.grad[..., 1] != 0)


@pytest.fixture
def one_thread():
    """Tiny tensors: threads only add contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_model_learns_a_separable_problem(one_thread):
    torch.manual_seed(0)
    n_classes, n_clips = 3, 24
    labels = torch.arange(n_clips) % n_classes
    lengths = torch.randint(4, 13, (n_clips,))
    t = int(lengths.max())
    proto_a, proto_v = torch.randn(n_classes, 6) * 2, torch.randn(n_classes, 5) * 2
    audio = proto_a[labels][:, None] + 0.5 * torch.randn(n_clips, t, 6)
    visual = proto_v[labels][:, None] + 0.5 * torch.randn(n_clips, t, 5)
    mask = torch.arange(t)[None] < lengths[:, None]
    model = create_model(
        "avarnet_tiny",
        audio_dim=6,
        visual_dim=5,
        num_classes=n_classes,
        num_layers=3,
        num_filters=16,
    )
    optim = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(150):
        loss, _ = avarnet_loss(model(audio, visual, mask), labels, mask)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < losses[0] / 5  # last steps averaged: dropout is noisy
    model.eval()
    with torch.no_grad():
        pred = model(audio, visual, mask)["clip_logits"].argmax(-1)
    assert torch.equal(pred, labels)
