"""Models: early fusion, the multi-stage TCN, AVAR-Net, its loss and a small registry.

Build models by name: ``create_model("avarnet_tiny", audio_dim=..., visual_dim=...,
num_classes=...)``; ``list_models()`` names the presets.
"""

from avarnet.models.avarnet import AVARNet, pool_clip_logits, segment_anomaly_scores
from avarnet.models.fusion import EarlyFusion
from avarnet.models.losses import avarnet_loss
from avarnet.models.mstcn import DilatedResidualLayer, MultiStageTCN, SingleStageTCN
from avarnet.models.registry import create_model, list_models, register_model

__all__ = [
    "AVARNet",
    "DilatedResidualLayer",
    "EarlyFusion",
    "MultiStageTCN",
    "SingleStageTCN",
    "avarnet_loss",
    "create_model",
    "list_models",
    "pool_clip_logits",
    "register_model",
    "segment_anomaly_scores",
]
