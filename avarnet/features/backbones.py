"""The two backbones (Wav2Vec2 for audio, timm MobileViT for frames), presets, and the
FeatureSpec that records exactly which weights and preprocessing were used.

Presets (:func:`build_feature_spec`):

- ``paper``: ``facebook/wav2vec2-base`` (768-d, 16 kHz, waveform normalised) and timm
  ``mobilevit_s`` with its pretrained weights (640-d, 256 x 256), 1 s segments of 8 frames.
  The default for real use; it needs the Hugging Face hub (or its local cache).
- ``full-random``: the same architectures, randomly initialised (seed 0). Same shapes and
  cost as ``paper``, for benchmarks where no weights can be downloaded.
- ``tiny``: a 2-layer, 64-d Wav2Vec2 and ``mobilevit_xxs`` (320-d) at 64 x 64, both
  randomly initialised, 4 frames per 1 s segment: for tests and the demo on a CPU.

Pretrained weights load through the standard library calls
(``Wav2Vec2Model.from_pretrained`` for a hub id or a local ``save_pretrained`` folder,
``timm.create_model(pretrained=True)``), or from a local timm checkpoint file. Random
weights are a pure function of the preset's seed: every process builds identical weights.

Nothing is loaded at import; transformers and timm are imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from avarnet.features.spec import FeatureSpec, FeatureSpecMismatch

if TYPE_CHECKING:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from avarnet.features.extractor import FeatureEncoders

__all__ = [
    "AUDIO_ARCHS",
    "PRESETS",
    "AudioBackboneMeta",
    "VisualBackboneMeta",
    "build_encoders",
    "build_feature_spec",
    "load_audio_backbone",
    "load_visual_backbone",
    "random_audio_backbone",
    "wav2vec2_config",
]

logger = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"

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
}
# The preprocessing of a random audio backbone: Wav2Vec2FeatureExtractor's defaults, which
# are also facebook/wav2vec2-base's preprocessor_config.json.
_RANDOM_AUDIO_PREPROCESSING = {"sample_rate": 16000, "audio_normalize": True}

# Audio fields of hub checkpoints named by presets, so that building a spec needs no
# network. build_encoders checks them against the downloaded config.
_KNOWN_HUB_AUDIO: dict[str, dict[str, Any]] = {
    "facebook/wav2vec2-base": {"audio_dim": 768, "sample_rate": 16000, "audio_normalize": True},
}

# Preset fields a user chooses. The others (sample_rate, audio_normalize, audio_dim,
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
    },
    "tiny": {
        "audio_backbone": "random:wav2vec2_tiny",
        "audio_revision": "seed=0",
        "visual_backbone": "mobilevit_xxs",
        "visual_weights": "random:seed=0",
        "image_size": 64,
        "frames_per_segment": 4,
        "segment_seconds": 1.0,
        "segment_frames": None,
        "pooling": "mean",
    },
}
_CHOSEN_FIELDS = frozenset(PRESETS["paper"])


@dataclass(frozen=True)
class AudioBackboneMeta:
    """What a loaded audio backbone says about itself.

    ``revision``: resolved hub commit (when transformers reports it, else the requested
    revision), ``sha256:<hex>`` of a local folder, or ``seed=<n>``."""

    hidden_size: int
    sample_rate: int
    normalize: bool
    revision: str | None


@dataclass(frozen=True)
class VisualBackboneMeta:
    """A loaded visual backbone's pooled feature size and timm data config.

    ``mean``/``std`` are RGB on the [0, 1] scale; ``input_size`` is ``(3, H, W)``;
    ``revision`` as :class:`~avarnet.features.spec.FeatureSpec.visual_revision`."""

    num_features: int
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    revision: str | None


# -- helpers ------------------------------------------------------------------------------


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


def _local_audio_digest(folder: str | os.PathLike) -> str:
    """``sha256:<hex>`` over a ``save_pretrained`` folder's config and weight files."""
    d = Path(folder)
    files = sorted(
        p
        for p in d.iterdir()
        if p.is_file() and (p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    )
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise FileNotFoundError(f"{d}: no weight files (*.safetensors, *.bin) in this folder")
    return _sha256_files(files)


def _parse_seed(text: str | None, what: str) -> int:
    """``"seed=3"`` -> 3; ``None`` or ``""`` -> 0."""
    if not text:
        return 0
    key, _, value = text.partition("=")
    if key != "seed" or not value.lstrip("-").isdigit():
        raise ValueError(f"{what}: expected 'seed=<int>', got {text!r}")
    return int(value)


def _normalise_visual_weights(weights: str) -> str:
    if weights == "random":
        return "random:seed=0"
    if weights.startswith(RANDOM_PREFIX):
        _parse_seed(weights[len(RANDOM_PREFIX) :], "visual_weights")
    return weights


def _is_local(name_or_path: str) -> bool:
    return os.path.isdir(name_or_path)


# -- audio --------------------------------------------------------------------------------


def wav2vec2_config(arch: str = "wav2vec2_tiny") -> Wav2Vec2Config:
    """A ``Wav2Vec2Config`` for one of :data:`AUDIO_ARCHS` (``wav2vec2_tiny``,
    ``wav2vec2_base``)."""
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


def _hub_hint(name: str, local: str = "a local save_pretrained folder") -> str:
    return (
        f"cannot load {name!r}: no access to the Hugging Face hub and not in its cache? "
        f"Use {local}, or the 'full-random' / 'tiny' presets (random weights)."
    )


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

    local = _is_local(name_or_path)
    try:
        model = Wav2Vec2Model.from_pretrained(
            name_or_path, revision=revision or "main", dtype=torch.float32
        )
    except OSError as err:
        if local:
            raise
        raise OSError(_hub_hint(name_or_path)) from err
    sample_rate, normalize = _feature_extractor_config(name_or_path, revision)
    if local:
        resolved = _local_audio_digest(name_or_path)
    else:
        resolved = getattr(model.config, "_commit_hash", None) or revision or "main"
    meta = AudioBackboneMeta(
        hidden_size=int(model.config.hidden_size),
        sample_rate=sample_rate,
        normalize=normalize,
        revision=resolved,
    )
    return model.eval(), meta


def _audio_fields(audio_backbone: str, audio_revision: str | None) -> dict[str, Any]:
    """The spec's audio fields for a backbone, from its configs (weights are not loaded)."""
    if audio_backbone.startswith(RANDOM_PREFIX):
        arch = audio_backbone[len(RANDOM_PREFIX) :]
        seed = _parse_seed(audio_revision, "audio_revision")
        return {
            "audio_revision": f"seed={seed}",
            "audio_dim": wav2vec2_config(arch).hidden_size,
            **_RANDOM_AUDIO_PREPROCESSING,
        }
    if _is_local(audio_backbone):
        from transformers import Wav2Vec2Config

        config = Wav2Vec2Config.from_pretrained(audio_backbone)
        sample_rate, normalize = _feature_extractor_config(audio_backbone, None)
        return {
            "audio_backbone": os.path.abspath(audio_backbone),
            "audio_revision": _local_audio_digest(audio_backbone),
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
        raise OSError(_hub_hint(audio_backbone)) from err
    sample_rate, normalize = _feature_extractor_config(audio_backbone, audio_revision)
    return {
        "audio_revision": audio_revision or "main",
        "audio_dim": int(config.hidden_size),
        "sample_rate": sample_rate,
        "audio_normalize": normalize,
    }


# -- visual -------------------------------------------------------------------------------


def _visual_meta(model: torch.nn.Module, revision: str | None) -> VisualBackboneMeta:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return VisualBackboneMeta(
        num_features=int(getattr(model, "head_hidden_size", None) or model.num_features),
        input_size=tuple(int(x) for x in cfg["input_size"]),
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        interpolation=str(cfg["interpolation"]),
        revision=revision,
    )


def _pretrained_id(model: torch.nn.Module, name: str) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("hf_hub_id") or (f"{name}.{cfg['tag']}" if cfg.get("tag") else name)


def load_visual_backbone(
    name: str = "mobilevit_s", *, weights: str = "pretrained", seed: int = 0
) -> tuple[torch.nn.Module, VisualBackboneMeta]:
    """Create a timm model that returns pooled features (``num_classes=0``), in eval mode.

    Args:
        name: timm model name (``mobilevit_s``, ``mobilevit_xs``, ``mobilevit_xxs``, ...).
        weights: ``"pretrained"`` (timm's default pretrained tag, from the hub), a local
            checkpoint file (a state dict as saved by ``torch.save(model.state_dict())`` or
            timm's training script; classifier weights are dropped, every other key must
            match), ``"random"`` (seeded by ``seed``) or ``"random:seed=<n>"``.
        seed: seed for ``"random"``.

    Returns:
        The model and its :class:`VisualBackboneMeta` (mean, std, input size and
        interpolation from ``timm.data.resolve_data_config``).
    """
    import timm

    weights = f"random:seed={seed}" if weights == "random" else _normalise_visual_weights(weights)
    if weights.startswith(RANDOM_PREFIX):
        seed = _parse_seed(weights[len(RANDOM_PREFIX) :], "visual_weights")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, num_classes=0)
        return model.eval(), _visual_meta(model, None)
    if weights == "pretrained":
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as err:  # hub errors come in several types (OSError, HfHubHTTPError)
            raise OSError(_hub_hint(f"timm/{name}", "a local checkpoint file")) from err
        return model.eval(), _visual_meta(model, _pretrained_id(model, name))
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"visual weights {weights!r}: not 'pretrained', 'random[:seed=N]' or an existing file"
        )
    from timm.models import load_state_dict

    model = timm.create_model(name, pretrained=False, num_classes=0)
    state = load_state_dict(str(path))
    classifier = model.pretrained_cfg.get("classifier") or ()
    for head in (classifier,) if isinstance(classifier, str) else classifier:
        state.pop(f"{head}.weight", None)
        state.pop(f"{head}.bias", None)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        reason = str(err).strip().splitlines()[1:2] or [""]
        raise ValueError(f"{path}: not a {name} checkpoint ({reason[0].strip()})") from None
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a {name} checkpoint (missing keys {list(missing)[:5]}, "
            f"unexpected keys {list(unexpected)[:5]})"
        )
    return model.eval(), _visual_meta(model, _sha256_files([path]))


def _visual_fields(name: str, weights: str, image_size: int | None) -> dict[str, Any]:
    """The spec's visual fields, from timm's config (the model is built on the meta device,
    so no memory is allocated and no weights are loaded)."""
    import timm

    weights = _normalise_visual_weights(weights)
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError:  # an architecture that cannot be built on the meta device
        model = timm.create_model(name, pretrained=False, num_classes=0)
    if weights.startswith(RANDOM_PREFIX):
        revision = None
    elif weights == "pretrained":
        revision = _pretrained_id(model, name)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"visual_weights {weights!r}: not 'pretrained', 'random[:seed=N]' or a file"
            )
        weights, revision = str(path.resolve()), _sha256_files([path])
    meta = _visual_meta(model, revision)
    return {
        "visual_weights": weights,
        "visual_revision": revision,
        "visual_dim": meta.num_features,
        "image_size": int(image_size) if image_size else meta.input_size[-1],
        "mean": meta.mean,
        "std": meta.std,
        "interpolation": meta.interpolation,
    }


# -- specs and encoders -------------------------------------------------------------------


def build_feature_spec(preset: str = "paper", **overrides: Any) -> FeatureSpec:
    """The FeatureSpec of a preset (``paper``, ``full-random``, ``tiny``), with overrides.

    Overridable: ``audio_backbone``, ``audio_revision``, ``visual_backbone``,
    ``visual_weights``, ``image_size``, ``frames_per_segment``, ``segment_seconds``,
    ``segment_frames``, ``pooling``. The preprocessing and dimensions (sample rate,
    normalisation, mean, std, interpolation, dims) are read from the chosen backbones'
    configs: a local audio folder's ``config.json`` and ``preprocessor_config.json``,
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
    fields.update(_audio_fields(chosen["audio_backbone"], chosen["audio_revision"]))
    fields.update(
        _visual_fields(chosen["visual_backbone"], chosen["visual_weights"], chosen["image_size"])
    )
    return FeatureSpec(preset=preset, **fields)


def _check(spec: FeatureSpec, found: dict[str, Any], what: str) -> None:
    differences = {k: (getattr(spec, k), v) for k, v in found.items() if getattr(spec, k) != v}
    if differences:
        raise FeatureSpecMismatch(differences, f"{what} does not match the FeatureSpec")


def build_encoders(
    spec: FeatureSpec, device: str | torch.device = "cpu", **kwargs: Any
) -> FeatureEncoders:
    """Build the :class:`~avarnet.features.extractor.FeatureEncoders` that ``spec`` describes.

    Loads (or seeds) both backbones, then checks what they report (dims, sample rate,
    normalisation, mean/std, local files' digests) against ``spec``: a spec saved with a
    model therefore always rebuilds the encoders that produced its training features, or
    fails. ``kwargs`` go to :class:`~avarnet.features.extractor.FeatureEncoders`
    (``visual_batch_size``, ``audio_batch_size``, ``max_audio_seconds``).

    Raises:
        FeatureSpecMismatch: the weights or their configs differ from the spec.
        OSError: hub weights that cannot be fetched (no network, not cached).
    """
    from avarnet.features.extractor import FeatureEncoders

    if spec.audio_backbone.startswith(RANDOM_PREFIX):
        audio_model, ameta = random_audio_backbone(
            spec.audio_backbone[len(RANDOM_PREFIX) :],
            seed=_parse_seed(spec.audio_revision, "audio_revision"),
        )
    else:
        local = _is_local(spec.audio_backbone)
        revision = None if local else spec.audio_revision
        audio_model, ameta = load_audio_backbone(spec.audio_backbone, revision=revision)
    found = {
        "audio_dim": ameta.hidden_size,
        "sample_rate": ameta.sample_rate,
        "audio_normalize": ameta.normalize,
    }
    if not spec.audio_backbone.startswith(RANDOM_PREFIX) and _is_local(spec.audio_backbone):
        found["audio_revision"] = ameta.revision  # the folder's digest
    _check(spec, found, f"audio backbone {spec.audio_backbone}")
    visual_model, vmeta = load_visual_backbone(spec.visual_backbone, weights=spec.visual_weights)
    found = {
        "visual_dim": vmeta.num_features,
        "visual_revision": vmeta.revision,
        "mean": vmeta.mean,
        "std": vmeta.std,
    }
    _check(spec, found, f"visual backbone {spec.visual_backbone}")
    return FeatureEncoders(spec, audio_model, visual_model, device=device, **kwargs)
