"""FeatureSpec: everything that makes two feature tables comparable.

A spec names the backbones and the exact weights (``*_revision``), the preprocessing that
travels with them (sample rate, waveform normalisation, image size, mean, std), and the
segment grid (``segment_seconds`` or ``segment_frames``, ``frames_per_segment``). It is
stored with every feature table and every model; training refuses features of another
spec and Serve rebuilds its encoders from the spec saved with the model.

Field meanings and units:

- ``audio_backbone``: Hugging Face model id (``facebook/wav2vec2-base``), a local
  ``save_pretrained`` folder, or ``random:<arch>`` (``random:wav2vec2_tiny_c128``,
  ``random:wav2vec2_tiny``, ``random:wav2vec2_base``) for a randomly initialised
  architecture.
- ``audio_revision``: hub commit hash or branch (``"main"``), ``"sha256:<hex>"`` of a
  local folder's config and weight files, or ``"seed=<n>"`` for random weights.
- ``visual_backbone``: timm model name (``mobilevit_s``).
- ``visual_weights``: ``"pretrained"`` (timm's default pretrained tag), a local
  checkpoint path, or ``"random:seed=<n>"``.
- ``visual_revision``: the pretrained weights' hub id (``timm/mobilevit_s.cvnets_in1k``),
  ``"sha256:<hex>"`` of a local checkpoint, or ``None`` for random weights.
- ``sample_rate`` (Hz) and ``audio_normalize`` (zero-mean/unit-variance waveform per chunk)
  come from the Hugging Face feature-extractor config; ``image_size`` (pixels, square),
  ``mean``/``std`` (RGB, on the [0, 1] scale) and ``interpolation`` come from timm's
  resolved data config. ``interpolation`` is recorded for reference: decoding squashes the
  whole frame to ``image_size`` with the decoder's own scaler (no crop).
- ``segment_seconds`` / ``segment_frames``: one step of the feature sequence T is one
  segment (see :mod:`avarnet.data.decode`); ``frames_per_segment`` K frames per segment.
- ``audio_dim`` / ``visual_dim``: feature sizes Da, Dv. ``pooling``: how backbone frames
  are reduced to one vector per segment (``"mean"``).
- ``visual_stages``: what one frame's visual vector is. Empty (every spec written before
  the field, and the ``paper`` preset): the backbone's pooled output (timm's global average
  of the last feature map). Otherwise the feature maps of these stages (indices into the
  timm model's ``feature_info``), each max-pooled over space, concatenated
  (:class:`~avarnet.features.visual.StagePool`); ``visual_dim`` is their channels' sum.
- ``chunk_segments``: segments decoded and encoded together. Wav2Vec2 sees one chunk's
  audio at a time, so this is the audio context and changes the audio features. Specs
  written before it was recorded read as :data:`DEFAULT_CHUNK_SEGMENTS`, the value every
  table and model used then.
- ``precision``: the encoders' arithmetic, one of :data:`PRECISIONS`. ``"fp32"``: plain
  float32; ``"bf16"`` / ``"fp16"``: the backbones run under ``torch.autocast`` with that
  dtype (CUDA; bf16 also on a CPU, fp16 on a CPU where torch's CPU autocast supports it).
  The features are stored as float32 either way, but differ slightly from fp32 ones, so
  tables of different precisions are not mixed. Specs written before it was recorded read
  as ``"fp32"``, what every encoder computed then.

:meth:`FeatureSpec.check_compatible` compares every field but two kinds: ``preset`` is only a
label (the preset the spec was built from), and the path of local weights
(``audio_backbone`` / ``visual_weights``) is ignored when both specs carry the same
``sha256`` digest, so that the same checkpoint in another folder or on another machine
(Serve) is accepted. :meth:`FeatureSpec.diff` reports every differing field.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# The default is written once, beside the chunked decoding it sizes (the data layer
# cannot import this module); it is the FeatureSpec's default, read from here.
from avarnet.data.decode import DEFAULT_CHUNK_SEGMENTS, DecodeOptions

__all__ = [
    "DEFAULT_CHUNK_SEGMENTS",
    "PRECISIONS",
    "FeatureSpec",
    "FeatureSpecMismatch",
    "POOLINGS",
]

POOLINGS = ("mean",)
# The encoders' arithmetic (the same names as avarnet.config.PRECISIONS, which the config
# validates against; a test keeps the two equal).
PRECISIONS = ("fp32", "bf16", "fp16")
# Fields that label a spec without changing what its features mean.
_LABEL_FIELDS = frozenset({"preset"})
# Path field -> digest field of local weights.
_LOCATION_FIELDS = {"audio_backbone": "audio_revision", "visual_weights": "visual_revision"}


class FeatureSpecMismatch(ValueError):
    """Two FeatureSpecs that do not produce comparable features. ``.differences`` maps each
    differing field to ``(mine, theirs)``."""

    def __init__(self, differences: dict[str, tuple[Any, Any]], context: str = ""):
        self.differences = differences
        diffs = "; ".join(
            f"{k}: {mine!r} != {theirs!r}" for k, (mine, theirs) in differences.items()
        )
        head = context or "feature specs differ"
        super().__init__(f"{head} ({len(differences)} field(s): {diffs})")


@dataclass(frozen=True)
class FeatureSpec:
    """How features were (or will be) extracted. Build one with
    :func:`avarnet.features.backbones.build_feature_spec`; see the module docstring for
    each field."""

    preset: str
    audio_backbone: str
    audio_revision: str | None
    visual_backbone: str
    visual_weights: str
    visual_revision: str | None
    sample_rate: int
    audio_normalize: bool
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    frames_per_segment: int
    segment_seconds: float
    segment_frames: int | None
    audio_dim: int
    visual_dim: int
    pooling: str = "mean"
    chunk_segments: int = DEFAULT_CHUNK_SEGMENTS
    precision: str = "fp32"
    visual_stages: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Normalise types so that a spec read from JSON equals the one that was written.
        set_ = object.__setattr__
        set_(self, "mean", tuple(float(x) for x in self.mean))
        set_(self, "std", tuple(float(x) for x in self.std))
        set_(self, "segment_seconds", float(self.segment_seconds))
        positive = ("sample_rate", "image_size", "frames_per_segment", "audio_dim", "visual_dim")
        for name in (*positive, "chunk_segments"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"FeatureSpec.{name} must be a positive integer, got {value!r}")
            set_(self, name, int(value))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(
                f"FeatureSpec mean/std must have 3 values, got {self.mean}, {self.std}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"FeatureSpec.std must be > 0, got {self.std}")
        if self.segment_frames is not None:
            if int(self.segment_frames) != self.segment_frames or self.segment_frames < 1:
                raise ValueError(
                    f"FeatureSpec.segment_frames must be >= 1, got {self.segment_frames}"
                )
            set_(self, "segment_frames", int(self.segment_frames))
        elif not self.segment_seconds > 0:
            raise ValueError(f"FeatureSpec.segment_seconds must be > 0, got {self.segment_seconds}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"FeatureSpec.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        set_(self, "audio_normalize", bool(self.audio_normalize))
        stages = self.visual_stages
        if not isinstance(stages, (list, tuple)):
            raise ValueError(f"FeatureSpec.visual_stages must be a list of stages, got {stages!r}")
        whole = all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in stages)
        if not whole or list(stages) != sorted(set(stages)):
            raise ValueError(
                f"FeatureSpec.visual_stages must be increasing stage indices, got {list(stages)}"
            )
        set_(self, "visual_stages", tuple(stages))
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"FeatureSpec.precision must be one of {PRECISIONS}, got {self.precision!r}"
            )

    # -- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["visual_stages"] = list(self.visual_stages)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`. Unknown or missing keys raise ``ValueError``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown FeatureSpec field(s): {unknown}; known: {sorted(names)}")
        required = {
            f.name
            for f in fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"FeatureSpec is missing field(s): {missing}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureSpec:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"FeatureSpec JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the spec as indented JSON to ``path`` (parents created)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSpec:
        return cls.from_json(Path(path).read_text())

    # -- use -----------------------------------------------------------------------------

    def decode_options(self, threads: int = 1, decoder: str = "auto") -> DecodeOptions:
        """The :class:`~avarnet.data.decode.DecodeOptions` that produce this spec's inputs,
        chunked by the spec's ``chunk_segments`` (the audio context).

        ``threads`` (decoder threads) and ``decoder`` (``DecodeOptions.decoder``) are
        run-time choices: they do not change the features.
        """
        return DecodeOptions(
            segment_seconds=self.segment_seconds,
            segment_frames=self.segment_frames,
            frames_per_segment=self.frames_per_segment,
            image_size=self.image_size,
            sample_rate=self.sample_rate,
            chunk_segments=self.chunk_segments,
            threads=threads,
            decoder=decoder,
        )

    def diff(self, other: FeatureSpec) -> dict[str, tuple[Any, Any]]:
        """Every field whose value differs, as ``{field: (mine, theirs)}`` (``preset`` too)."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        }

    def check_compatible(self, other: FeatureSpec) -> None:
        """Raise :class:`FeatureSpecMismatch` (listing each differing field) unless ``other``
        produces the same features. ``preset`` is a label and is not compared; the path of a
        local checkpoint is not compared when both specs carry the same ``sha256`` digest."""
        differences = {k: v for k, v in self.diff(other).items() if k not in _LABEL_FIELDS}
        # Local weights are identified by their digest, not by where they lie: the same
        # checkpoint in another folder (another machine) gives the same features.
        for location, digest in _LOCATION_FIELDS.items():
            local = str(getattr(self, digest) or "").startswith("sha256:")
            if local and location in differences and digest not in differences:
                del differences[location]
        if differences:
            raise FeatureSpecMismatch(differences)
