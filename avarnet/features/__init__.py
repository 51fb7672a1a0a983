"""Audio-visual features on a segment grid.

- :mod:`~avarnet.features.spec`: :class:`FeatureSpec`, what makes features comparable.
- :mod:`~avarnet.features.backbones`: presets, :func:`build_feature_spec`,
  :func:`build_encoders`.
- :mod:`~avarnet.features.audio` (Wav2Vec2) and :mod:`~avarnet.features.visual` (timm
  MobileViT): loading the backbones; :mod:`~avarnet.features.weights`: how weights are named.
- :mod:`~avarnet.features.extractor`: :class:`FeatureEncoders`, chunks -> ``(n, Da)``,
  ``(n, Dv)`` features.
- :mod:`~avarnet.features.align`: backbone frames -> segments.
- :mod:`~avarnet.features.table`: the Parquet feature table.

Names are imported on first use, so that importing this package (for example to read a
feature table in a decode-only worker) does not import torch, transformers or timm.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FeatureSpec": "avarnet.features.spec",
    "FeatureSpecMismatch": "avarnet.features.spec",
    "PRESETS": "avarnet.features.backbones",
    "build_feature_spec": "avarnet.features.backbones",
    "build_encoders": "avarnet.features.backbones",
    "load_audio_backbone": "avarnet.features.audio",
    "load_visual_backbone": "avarnet.features.visual",
    "ClipFeatures": "avarnet.features.extractor",
    "FeatureEncoders": "avarnet.features.extractor",
    "pool_to_segments": "avarnet.features.align",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'avarnet.features' has no attribute {name!r}")
