"""The audio backbone: Wav2Vec2 (transformers), pretrained or randomly initialised.

Pretrained weights load through ``Wav2Vec2Model.from_pretrained`` (a hub id or a local
``save_pretrained`` folder); the preprocessing (sample rate, waveform normalisation) comes
from the checkpoint's feature-extractor config. Random weights (``random:<arch>``, one of
:data:`AUDIO_ARCHS`) are a pure function of the seed. transformers is imported inside the
functions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from avarnet.features.weights import RANDOM_PREFIX, hub_hint, is_local, parse_seed, sha256_files

if TYPE_CHECKING:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

__all__ = [
    "AUDIO_ARCHS",
    "AudioBackboneMeta",
    "audio_backbone_for",
    "audio_spec_fields",
    "load_audio_backbone",
    "random_audio_backbone",
    "wav2vec2_config",
]

logger = logging.getLogger(__name__)

# Architectures for randomly initialised audio backbones. Both keep wav2vec2-base's
# feature encoder strides (5, 2, 2, 2, 2, 2, 2): 320 samples = 20 ms per output frame at
# 16 kHz, 400 samples (25 ms) of receptive field, group norm in the first conv layer.
_W2V_COMMON: dict[str, Any] = {
    "conv_stride": (5, 2, 2, 2, 2, 2, 2),
    "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
    "conv_bias": False,
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
AUDIO_ARCHS: dict[str, dict[str, Any]] = {
    # facebook/wav2vec2-base's config.json, written out so that it does not depend on
    # transformers' defaults.
    "wav2vec2_base": {
        **_W2V_COMMON,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "conv_dim": (512,) * 7,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
    },
    "wav2vec2_tiny": {
        **_W2V_COMMON,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "conv_dim": (32,) * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
    },
    # The tiny preset's: wav2vec2_tiny with 128 channels in its convolutional feature
    # encoder, not 32. Random, that encoder is a random filter bank: with 32 filters the
    # five audio signatures of the generated benchmark were told apart from clip means at
    # 0.92 with seed 0 but 0.82 with seed 1 (a linear probe, 4-fold CV over 120 clips);
    # with 128, 0.97, 0.96 and 0.94 for seeds 0, 1 and 2, and no clean clip wrong. The
    # transformer stays 64-d, so the features keep their size; the audio encoder took 0.9
    # and 1.9 s (two runs) against 0.3 s for 120 clips of 4 s on two CPU threads (README,
    # Model and training).
    "wav2vec2_tiny_c128": {
        **_W2V_COMMON,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "conv_dim": (128,) * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
    },
}
# The preprocessing of a random audio backbone: Wav2Vec2FeatureExtractor's defaults, which
# are also facebook/wav2vec2-base's preprocessor_config.json.
_RANDOM_AUDIO_PREPROCESSING = {"sample_rate": 16000, "audio_normalize": True}

# Audio fields of hub checkpoints named by presets, so that building a spec needs no
# network. build_encoders checks them against the downloaded config.
_KNOWN_HUB_AUDIO: dict[str, dict[str, Any]] = {
    "facebook/wav2vec2-base": {"audio_dim": 768, "sample_rate": 16000, "audio_normalize": True},
}


@dataclass(frozen=True)
class AudioBackboneMeta:
    """What a loaded audio backbone says about itself.

    ``revision``: resolved hub commit (when transformers reports it, else the requested
    revision), ``sha256:<hex>`` of a local folder, or ``seed=<n>``."""

    hidden_size: int
    sample_rate: int
    normalize: bool
    revision: str | None


def local_audio_digest(folder: str | os.PathLike) -> str:
    """``sha256:<hex>`` over a ``save_pretrained`` folder's config and weight files."""
    d = Path(folder)
    files = sorted(
        p
        for p in d.iterdir()
        if p.is_file() and (p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    )
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise FileNotFoundError(f"{d}: no weight files (*.safetensors, *.bin) in this folder")
    return sha256_files(files)


def wav2vec2_config(arch: str = "wav2vec2_tiny") -> Wav2Vec2Config:
    """A ``Wav2Vec2Config`` for one of :data:`AUDIO_ARCHS` (``wav2vec2_tiny``,
    ``wav2vec2_tiny_c128``, ``wav2vec2_base``)."""
    from transformers import Wav2Vec2Config

    if arch not in AUDIO_ARCHS:
        raise ValueError(f"unknown audio architecture {arch!r}; known: {sorted(AUDIO_ARCHS)}")
    return Wav2Vec2Config(**AUDIO_ARCHS[arch])


def random_audio_backbone(
    arch: str = "wav2vec2_tiny", *, seed: int = 0
) -> tuple[Wav2Vec2Model, AudioBackboneMeta]:
    """A randomly initialised ``Wav2Vec2Model`` (eval mode). The weights depend only on
    ``arch`` and ``seed`` (the global RNG is left untouched)."""
    from transformers import Wav2Vec2Model

    config = wav2vec2_config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2Model(config)
    meta = AudioBackboneMeta(
        hidden_size=config.hidden_size,
        sample_rate=_RANDOM_AUDIO_PREPROCESSING["sample_rate"],
        normalize=_RANDOM_AUDIO_PREPROCESSING["audio_normalize"],
        revision=f"seed={seed}",
    )
    return model.eval(), meta


def _feature_extractor_config(name_or_path: str, revision: str | None) -> tuple[int, bool]:
    """``(sampling_rate, do_normalize)`` from the checkpoint's feature-extractor config, or
    ``Wav2Vec2FeatureExtractor``'s defaults (16000, True) where the checkpoint has none."""
    from transformers import Wav2Vec2FeatureExtractor

    try:
        fe = Wav2Vec2FeatureExtractor.from_pretrained(name_or_path, revision=revision or "main")
    except OSError:
        logger.warning(
            "%s has no feature-extractor config (preprocessor_config.json): using "
            "Wav2Vec2FeatureExtractor defaults (16 kHz, normalised waveform)",
            name_or_path,
        )
        fe = Wav2Vec2FeatureExtractor()
    return int(fe.sampling_rate), bool(fe.do_normalize)


def load_audio_backbone(
    name_or_path: str, *, revision: str | None = None
) -> tuple[Wav2Vec2Model, AudioBackboneMeta]:
    """Load a pretrained Wav2Vec2 encoder with ``transformers.Wav2Vec2Model.from_pretrained``.

    Args:
        name_or_path: hub id (``facebook/wav2vec2-base``) or a local ``save_pretrained``
            folder. Checkpoints with pre-training or CTC heads load their encoder only.
        revision: hub branch, tag or commit (ignored for a local folder).

    Returns:
        The model in eval mode (float32) and its :class:`AudioBackboneMeta` (sample rate and
        ``do_normalize`` from the feature-extractor config where present).
    """
    from transformers import Wav2Vec2Model

    local = is_local(name_or_path)
    try:
        model = Wav2Vec2Model.from_pretrained(
            name_or_path, revision=revision or "main", dtype=torch.float32
        )
    except OSError as err:
        if local:
            raise
        raise OSError(hub_hint(name_or_path)) from err
    sample_rate, normalize = _feature_extractor_config(name_or_path, revision)
    if local:
        resolved = local_audio_digest(name_or_path)
    else:
        resolved = getattr(model.config, "_commit_hash", None) or revision or "main"
    meta = AudioBackboneMeta(
        hidden_size=int(model.config.hidden_size),
        sample_rate=sample_rate,
        normalize=normalize,
        revision=resolved,
    )
    return model.eval(), meta


def audio_backbone_for(
    backbone: str, revision: str | None
) -> tuple[Wav2Vec2Model, AudioBackboneMeta]:
    """The audio backbone a FeatureSpec names (``audio_backbone``, ``audio_revision``):
    seeded random weights, a local folder (its revision is a digest, not a hub revision)
    or hub weights."""
    if backbone.startswith(RANDOM_PREFIX):
        arch = backbone[len(RANDOM_PREFIX) :]
        return random_audio_backbone(arch, seed=parse_seed(revision, "audio_revision"))
    return load_audio_backbone(backbone, revision=None if is_local(backbone) else revision)


def audio_spec_fields(audio_backbone: str, audio_revision: str | None) -> dict[str, Any]:
    """The spec's audio fields for a backbone, from its configs (weights are not loaded)."""
    if audio_backbone.startswith(RANDOM_PREFIX):
        arch = audio_backbone[len(RANDOM_PREFIX) :]
        seed = parse_seed(audio_revision, "audio_revision")
        return {
            "audio_revision": f"seed={seed}",
            "audio_dim": wav2vec2_config(arch).hidden_size,
            **_RANDOM_AUDIO_PREPROCESSING,
        }
    if is_local(audio_backbone):
        from transformers import Wav2Vec2Config

        config = Wav2Vec2Config.from_pretrained(audio_backbone)
        sample_rate, normalize = _feature_extractor_config(audio_backbone, None)
        return {
            "audio_backbone": os.path.abspath(audio_backbone),
            "audio_revision": local_audio_digest(audio_backbone),
            "audio_dim": int(config.hidden_size),
            "sample_rate": sample_rate,
            "audio_normalize": normalize,
        }
    if audio_backbone in _KNOWN_HUB_AUDIO:
        return {"audio_revision": audio_revision or "main", **_KNOWN_HUB_AUDIO[audio_backbone]}
    from transformers import Wav2Vec2Config

    try:
        config = Wav2Vec2Config.from_pretrained(audio_backbone, revision=audio_revision or "main")
    except OSError as err:
        raise OSError(hub_hint(audio_backbone)) from err
    sample_rate, normalize = _feature_extractor_config(audio_backbone, audio_revision)
    return {
        "audio_revision": audio_revision or "main",
        "audio_dim": int(config.hidden_size),
        "sample_rate": sample_rate,
        "audio_normalize": normalize,
    }
