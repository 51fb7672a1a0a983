"""Presets, the FeatureSpec they give, and the encoders a FeatureSpec describes.

The backbones themselves live in :mod:`~avarnet.features.audio` (Wav2Vec2) and
:mod:`~avarnet.features.visual` (timm MobileViT). Presets (:func:`build_feature_spec`):

- ``paper``: ``facebook/wav2vec2-base`` (768-d, 16 kHz, waveform normalised) and timm
  ``mobilevit_s`` with its pretrained weights (640-d, 256 x 256), 1 s segments of 8 frames.
  The default for real use; it needs the Hugging Face hub (or its local cache).
- ``full-random``: the same architectures, randomly initialised (seed 0). Same shapes and
  cost as ``paper``, for benchmarks where no weights can be downloaded.
- ``tiny``: a 2-layer, 64-d Wav2Vec2 with 128 channels in its convolutional encoder
  (``wav2vec2_tiny_c128``) and ``mobilevit_xxs`` at 64 x 64, both randomly initialised, 4
  frames per 1 s segment: for tests and the demo on a CPU. Its visual
  features are MobileViT's first three stages, each max-pooled over space (88-d:
  ``visual_stages``), not the pooled last map (320-d): random deep stages lose what the
  early ones see.

Every preset decodes and encodes :data:`~avarnet.features.spec.DEFAULT_CHUNK_SEGMENTS`
segments at a time (``chunk_segments``, the audio context) in float32 (``precision``);
both can be overridden like the other chosen fields. ``precision="bf16"`` or ``"fp16"``
runs both backbones under ``torch.autocast`` (:class:`Autocast`, built by
:func:`build_encoders`); the features still come out as float32.

Nothing is loaded at import; transformers and timm are imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from avarnet.features.audio import audio_backbone_for, audio_spec_fields
from avarnet.features.spec import FeatureSpec, FeatureSpecMismatch
from avarnet.features.visual import load_visual_backbone, visual_spec_fields
from avarnet.features.weights import RANDOM_PREFIX, is_local

if TYPE_CHECKING:
    from avarnet.features.extractor import FeatureEncoders

__all__ = [
    "AUTOCAST_DTYPES",
    "PRESETS",
    "Autocast",
    "autocast_dtype",
    "build_encoders",
    "build_feature_spec",
]

# mean, std, interpolation, visual_dim) are read from the backbones' own configs.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "audio_backbone": "facebook/wav2vec2-base",
        "audio_revision": "main",
        "visual_backbone": "mobilevit_s",
        "visual_weights": "pretrained",
        "image_size": None,  # timm's input size (256)
        "frames_per_segment": 8,
        "segment_seconds": 1.0,
        "segment_frames": None,
        "pooling": "mean",
        "visual_stages": (),
    },
    "full-random": {
        "audio_backbone": "random:wav2vec2_base",
        "audio_revision": "seed=0",
        "visual_backbone": "mobilevit_s",
        "visual_weights": "random:seed=0",
        "image_size": None,
        "frames_per_segment": 8,
        "segment_seconds": 1.0,
        "segment_frames": None,
        "pooling": "mean",
        "visual_stages": (),
    },
    "tiny": {
        # 128 filters in the random convolutional encoder, not 32 (avarnet.features.audio).
        "audio_backbone": "random:wav2vec2_tiny_c128",
        "audio_revision": "seed=0",
        "visual_backbone": "mobilevit_xxs",
        "visual_weights": "random:seed=0",
        "image_size": 64,
        "frames_per_segment": 4,
        "segment_seconds": 1.0,
        "segment_frames": None,
        "pooling": "mean",
        # Random weights: the first three stages (the first MobileViT block included), each
        # max-pooled over space, not the pooled last map. Deep random stages mix colour and
        # shape into noise; on the 12-clips-per-class benchmark a linear probe tells the
        # five visual signatures apart from clip means at 0.94 this way against 0.78; with
        # the 128-filter audio encoder early fusion reached 1.000 / 0.950 / 1.000 on train
        # seeds 0, 1, 2 through avarnet train (README, Model and training).
        "visual_stages": (0, 1, 2),
    },
}
# ...and the chunk length and precision, which every preset leaves at the FeatureSpec's
# defaults.
_CHOSEN_FIELDS = frozenset(PRESETS["paper"]) | {"chunk_segments", "precision"}
# FeatureSpec.precision -> the dtype its backbones run in under torch.autocast.
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def build_feature_spec(preset: str = "paper", **overrides: Any) -> FeatureSpec:
    """The FeatureSpec of a preset (``paper``, ``full-random``, ``tiny``), with overrides.

    Overridable: ``audio_backbone``, ``audio_revision``, ``visual_backbone``,
    ``visual_weights``, ``image_size``, ``frames_per_segment``, ``segment_seconds``,
    ``segment_frames``, ``pooling``, ``chunk_segments``, ``precision``. The preprocessing and dimensions
    (sample rate, normalisation, mean, std, interpolation, dims) are read from the chosen
    backbones' configs: a local audio folder's ``config.json`` and ``preprocessor_config.json``,
    timm's pretrained config. A local folder or checkpoint is recorded by absolute path and
    ``sha256`` digest. Only a hub audio id not named by a preset needs the hub here.

    Raises:
        ValueError: unknown preset or field, or a field that must come from a config.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown feature preset {preset!r}; known: {sorted(PRESETS)}")
    bad = sorted(set(overrides) - _CHOSEN_FIELDS)
    if bad:
        derived = {f.name for f in dataclasses.fields(FeatureSpec)} - _CHOSEN_FIELDS
        why = [
            f"{k} (read from the backbone's config)" if k in derived else f"{k} (unknown)"
            for k in bad
        ]
        raise ValueError(f"cannot override {', '.join(why)}; overridable: {sorted(_CHOSEN_FIELDS)}")
    chosen = {**PRESETS[preset], **overrides}
    if "audio_backbone" in overrides and "audio_revision" not in overrides:
        chosen["audio_revision"] = None  # the preset's revision belongs to its own backbone
    fields = dict(chosen)
    fields.update(audio_spec_fields(chosen["audio_backbone"], chosen["audio_revision"]))
    fields.update(
        visual_spec_fields(
            chosen["visual_backbone"],
            chosen["visual_weights"],
            chosen["image_size"],
            chosen["visual_stages"],
        )
    )
    return FeatureSpec(preset=preset, **fields)


def _check(spec: FeatureSpec, found: dict[str, Any], what: str) -> None:
    differences = {k: (getattr(spec, k), v) for k, v in found.items() if getattr(spec, k) != v}
    if differences:
        raise FeatureSpecMismatch(differences, f"{what} does not match the FeatureSpec")


def _float32(out: Any) -> Any:
    """``out`` with its floating tensors as float32: a tensor, a tuple of them, or a
    transformers ``ModelOutput`` (a mapping), changed in place."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple):
        return type(out)(_float32(x) for x in out)
    if isinstance(out, Mapping):
        for key in list(out.keys()):
            out[key] = _float32(out[key])
    return out


class Autocast(torch.nn.Module):
    """A backbone run under ``torch.autocast(dtype)`` on the device its weights are on.
    The weights stay float32; floating outputs come back as float32.

    ``config`` is the wrapped model's (Wav2Vec2's config gives the encoders their hop)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        device_type = next(self.model.parameters()).device.type
        with torch.autocast(device_type, dtype=self.dtype):
            out = self.model(*args, **kwargs)
        return _float32(out)


def _cpu_autocast_supports(dtype: torch.dtype) -> bool:
    # A torch whose CPU autocast lacks a dtype warns and disables itself (fp16 before 2.2).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx = torch.autocast("cpu", dtype=dtype)
    refused = any("not supported" in str(w.message) for w in caught)
    return bool(getattr(ctx, "_enabled", True)) and not refused


def autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The dtype the backbones of ``precision`` (``FeatureSpec.precision``) run in on
    ``device``: None for ``fp32`` (no autocast).

    Raises:
        ValueError: a precision this device's autocast does not support (naming the
            ``features.precision`` setting).
    """
    if precision == "fp32":
        return None
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; known: fp32, {sorted(AUTOCAST_DTYPES)}")
    dtype, dev = AUTOCAST_DTYPES[precision], torch.device(device)
    if dev.type == "cpu":
        ok = _cpu_autocast_supports(dtype)
    elif dev.type == "cuda":
        ok = precision != "bf16" or torch.cuda.is_bf16_supported()
    else:
        ok = torch.amp.is_autocast_available(dev.type)
    if not ok:
        raise ValueError(
            f"features.precision={precision} (FeatureSpec.precision): torch {torch.__version__} "
            f"cannot autocast to {dtype} on {dev.type}; use features.precision=fp32"
            + (" or bf16" if precision == "fp16" and dev.type == "cpu" else "")
            + " (the feature table's precision must match the model's)"
        )
    return dtype


def build_encoders(
    spec: FeatureSpec, device: str | torch.device = "cpu", **kwargs: Any
) -> FeatureEncoders:
    """Build the :class:`~avarnet.features.extractor.FeatureEncoders` that ``spec`` describes.

    Loads (or seeds) both backbones, then checks what they report (dims, sample rate,
    normalisation, mean/std, local files' digests) against ``spec``: a spec saved with a
    model therefore always rebuilds the encoders that produced its training features, or
    fails. ``kwargs`` go to :class:`~avarnet.features.extractor.FeatureEncoders`
    (``visual_batch_size``, ``audio_batch_size``, ``max_audio_seconds``).

    A ``spec.precision`` of ``bf16`` or ``fp16`` wraps both backbones in :class:`Autocast`
    (float32 weights, half-precision arithmetic, float32 features).

    Raises:
        FeatureSpecMismatch: the weights or their configs differ from the spec.
        OSError: hub weights that cannot be fetched (no network, not cached).
        ValueError: a precision the device cannot autocast to.
    """
    from avarnet.features.extractor import FeatureEncoders

    dtype = autocast_dtype(spec.precision, device)  # fail before loading any weights

    audio_model, ameta = audio_backbone_for(spec.audio_backbone, spec.audio_revision)
    found = {
        "audio_dim": ameta.hidden_size,
        "sample_rate": ameta.sample_rate,
        "audio_normalize": ameta.normalize,
    }
    if not spec.audio_backbone.startswith(RANDOM_PREFIX) and is_local(spec.audio_backbone):
        found["audio_revision"] = ameta.revision  # the folder's digest
    _check(spec, found, f"audio backbone {spec.audio_backbone}")
    visual_model, vmeta = load_visual_backbone(
        spec.visual_backbone, weights=spec.visual_weights, stages=spec.visual_stages
    )
    found = {
        "visual_dim": vmeta.num_features,
        "visual_revision": vmeta.revision,
        "mean": vmeta.mean,
        "std": vmeta.std,
    }
    _check(spec, found, f"visual backbone {spec.visual_backbone}")
    if dtype is not None:
        audio_model, visual_model = Autocast(audio_model, dtype), Autocast(visual_model, dtype)
    return FeatureEncoders(spec, audio_model, visual_model, device=device, **kwargs)
