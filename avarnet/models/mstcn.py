"""Multi-Stage Temporal Convolutional Network (MS-TCN, Farha & Gall, CVPR 2019).

Follows the reference code (github.com/yabufarha/ms-tcn, ``model.py``): each stage is a
1x1 convolution, ``num_layers`` dilated residual layers (dilation ``2**l``) and a 1x1
convolution to class logits; every later stage refines the softmax of the previous one.

Layout is the convolutions' own: features ``(B, D, T)``, logits ``(B, C, T)``; one step of
T is one feature segment. ``mask (B, T)`` is True on valid steps. It is multiplied in after
the input projection, every layer and every stage output, so padded steps stay exactly zero
and act like the convolutions' zero padding: a padded batch gives, on its valid steps, the
same outputs as each clip alone. (The reference does not mask the input projection; we do,
because its bias would otherwise leak into valid steps near the end of a shorter clip.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DilatedResidualLayer", "MultiStageTCN", "SingleStageTCN", "receptive_field"]


def receptive_field(num_layers: int, kernel_size: int = 3, num_stages: int = 1) -> int:
    """Steps of input that one output step sees: ``1 + S (k - 1) (2**L - 1)``.

    Layer ``l`` widens the field by ``(k - 1) 2**l``; stages are stacked in sequence. For
    the defaults (4 stages x 10 layers, kernel 3): 8185 steps; one stage: 2047.
    """
    return 1 + num_stages * (kernel_size - 1) * (2**num_layers - 1)


class DilatedResidualLayer(nn.Module):
    """``x + dropout(conv1x1(relu(dilated_conv(x))))``, masked. ``(B, F, T) -> (B, F, T)``."""

    def __init__(self, dilation: int, channels: int, kernel_size: int = 3, dropout: float = 0.5):
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2  # "same" length for odd kernels
        self.conv_dilated = nn.Conv1d(
            channels, channels, kernel_size, padding=padding, dilation=dilation
        )
        self.conv_1x1 = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv_1x1(F.relu(self.conv_dilated(x))))
        return (x + out) * mask


class SingleStageTCN(nn.Module):
    """1x1 conv in, ``num_layers`` dilated residual layers, 1x1 conv out.
    ``(B, in_dim, T) -> (B, num_classes, T)``; ``mask`` is ``(B, 1, T)`` float."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        num_layers: int,
        num_filters: int,
        kernel_size: int = 3,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.conv_in = nn.Conv1d(in_dim, num_filters, 1)
        self.layers = nn.ModuleList(
            DilatedResidualLayer(2**i, num_filters, kernel_size, dropout) for i in range(num_layers)
        )
        self.conv_out = nn.Conv1d(num_filters, num_classes, 1)
        self.receptive_field = receptive_field(num_layers, kernel_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.conv_in(x) * mask
        for layer in self.layers:
            out = layer(out, mask)
        return self.conv_out(out) * mask


class MultiStageTCN(nn.Module):
    """``num_stages`` single-stage TCNs; stage ``s > 0`` takes the softmax of stage ``s - 1``.

    ``forward(x (B, in_dim, T), mask (B, T) bool | None) -> (S, B, num_classes, T)`` stage
    logits, zero on padded steps; the last stage is the model's prediction.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        num_stages: int = 4,
        num_layers: int = 10,
        num_filters: int = 64,
        kernel_size: int = 3,
        dropout: float = 0.5,
    ):
        super().__init__()
        if num_stages < 1 or num_layers < 1 or num_filters < 1:
            raise ValueError("num_stages, num_layers and num_filters must be >= 1")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-length output), got {kernel_size}")
        self.stages = nn.ModuleList(
            SingleStageTCN(
                in_dim if s == 0 else num_classes,
                num_classes,
                num_layers,
                num_filters,
                kernel_size,
                dropout,
            )
            for s in range(num_stages)
        )
        self.receptive_field = receptive_field(num_layers, kernel_size, num_stages)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            m = x.new_ones(x.shape[0], 1, x.shape[-1])
        else:
            m = mask.unsqueeze(1).to(x.dtype)
        out = self.stages[0](x, m)
        outputs = [out]
        for stage in self.stages[1:]:
            out = stage(F.softmax(out, dim=1) * m, m)
            outputs.append(out)
        return torch.stack(outputs)
