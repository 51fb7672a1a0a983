"""The visual backbone: a timm model (MobileViT) returning pooled features per frame.

Weights are timm's pretrained ones (``timm.create_model(pretrained=True)``), a local
checkpoint file, or random (``random:seed=<n>``, a pure function of the seed). Mean, std,
input size and interpolation come from ``timm.data.resolve_data_config``. timm is imported
inside the functions.

What a frame's vector is (``FeatureSpec.visual_stages``): by default the model's own
pooled output (the last feature map, average-pooled over space: timm's ``num_classes=0``);
with stages named, :class:`StagePool`: those stages' feature maps (timm's
``forward_intermediates``, which stops after the last one named), each max-pooled over
space, concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from avarnet.features.weights import RANDOM_PREFIX, hub_hint, parse_seed, sha256_files

__all__ = [
    "StagePool",
    "VisualBackboneMeta",
    "load_visual_backbone",
    "normalise_visual_weights",
    "visual_spec_fields",
]


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


def normalise_visual_weights(weights: str) -> str:
    if weights == "random":
        return "random:seed=0"
    if weights.startswith(RANDOM_PREFIX):
        parse_seed(weights[len(RANDOM_PREFIX) :], "visual_weights")
    return weights


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


class StagePool(torch.nn.Module):
    """A timm model's feature maps at ``stages`` (indices into ``model.feature_info``), each
    max-pooled over space and concatenated: ``(B, 3, H, W) -> (B, sum of their channels)``.

    The forward pass stops after the last stage named. The maximum keeps a small coloured
    shape that fills a few cells of a map, where the average over the whole frame dilutes it
    (and a box over half the frame halves it)."""

    def __init__(self, model: torch.nn.Module, stages: Sequence[int]):
        super().__init__()
        self.stages, self.num_features = check_stages(model, stages)
        self.model = model
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.model.forward_intermediates(
            x, indices=list(self.stages), intermediates_only=True, stop_early=True
        )
        return torch.cat([m.amax(dim=(2, 3)) for m in maps], dim=1)


def check_stages(model: torch.nn.Module, stages: Sequence[int]) -> tuple[tuple[int, ...], int]:
    """``stages`` as a tuple and the sum of their channels (the features' size), or
    ``ValueError`` unless they are increasing indices into the model's ``feature_info`` (a
    model without one cannot give stage features)."""
    info = getattr(model, "feature_info", None)
    name = type(model).__name__
    if not info or not hasattr(model, "forward_intermediates"):
        raise ValueError(f"visual_stages: timm model {name} has no feature stages to read")
    stages = tuple(int(i) for i in stages)
    if (
        not stages
        or list(stages) != sorted(set(stages))
        or not 0 <= stages[0] <= stages[-1] < len(info)
    ):
        raise ValueError(
            f"visual_stages {list(stages)}: expected increasing indices in 0..{len(info) - 1} "
            f"({name}'s stages: {[f['module'] for f in info]})"
        )
    return stages, sum(int(info[i]["num_chs"]) for i in stages)


def _pretrained_id(model: torch.nn.Module, name: str) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("hf_hub_id") or (f"{name}.{cfg['tag']}" if cfg.get("tag") else name)


def load_visual_backbone(
    name: str = "mobilevit_s",
    *,
    weights: str = "pretrained",
    seed: int = 0,
    stages: Sequence[int] = (),
) -> tuple[torch.nn.Module, VisualBackboneMeta]:
    """Create a timm model that returns pooled features (``num_classes=0``), in eval mode.

    Args:
        name: timm model name (``mobilevit_s``, ``mobilevit_xs``, ``mobilevit_xxs``, ...).
        weights: ``"pretrained"`` (timm's default pretrained tag, from the hub), a local
            checkpoint file (a state dict as saved by ``torch.save(model.state_dict())`` or
            timm's training script; classifier weights are dropped, every other key must
            match), ``"random"`` (seeded by ``seed``) or ``"random:seed=<n>"``.
        seed: seed for ``"random"``.
        stages: empty (the model's pooled output) or the stages whose feature maps, each
            max-pooled over space, make the features (:class:`StagePool`).

    Returns:
        The model and its :class:`VisualBackboneMeta` (mean, std, input size and
        interpolation from ``timm.data.resolve_data_config``).
    """
    model, meta = _load_timm(name, weights, seed)
    if not stages:
        return model, meta
    pooled = StagePool(model, stages).eval()
    return pooled, replace(meta, num_features=pooled.num_features)


def _load_timm(name: str, weights: str, seed: int) -> tuple[torch.nn.Module, VisualBackboneMeta]:
    import timm

    weights = f"random:seed={seed}" if weights == "random" else normalise_visual_weights(weights)
    if weights.startswith(RANDOM_PREFIX):
        seed = parse_seed(weights[len(RANDOM_PREFIX) :], "visual_weights")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, num_classes=0)
        return model.eval(), _visual_meta(model, None)
    if weights == "pretrained":
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as err:  # hub errors come in several types (OSError, HfHubHTTPError)
            raise OSError(hub_hint(f"timm/{name}", "a local checkpoint file")) from err
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
    return model.eval(), _visual_meta(model, sha256_files([path]))


def visual_spec_fields(
    name: str, weights: str, image_size: int | None, stages: Sequence[int] = ()
) -> dict[str, Any]:
    """The spec's visual fields, from timm's config (the model is built on the meta device,
    so no memory is allocated and no weights are loaded)."""
    import timm

    weights = normalise_visual_weights(weights)
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
        weights, revision = str(path.resolve()), sha256_files([path])
    meta = _visual_meta(model, revision)
    stages, dim = check_stages(model, stages) if stages else ((), meta.num_features)
    return {
        "visual_weights": weights,
        "visual_revision": revision,
        "visual_stages": stages,
        "visual_dim": dim,
        "image_size": int(image_size) if image_size else meta.input_size[-1],
        "mean": meta.mean,
        "std": meta.std,
        "interpolation": meta.interpolation,
    }
