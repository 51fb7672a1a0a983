"""One self-describing model artifact, and the one Predictor that batch inference,
evaluation and Serve share.

An artifact is a folder::

    model.json   {"format", "model_name", "model_kwargs", "labels", "normal_label",
                  "multilabel", "feature_spec", "metrics", "config"}
    model.pt     the state dict

Registry URIs (``models:/avarnet@champion``) are resolved to such a folder by the caller
(``glue.tracking.download_model``); this module never imports mlflow.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avarnet.batching import pad_batch
from avarnet.features.spec import FeatureSpec
from avarnet.models import create_model

__all__ = [
    "ARTIFACT_FORMAT",
    "Prediction",
    "Predictor",
    "find_normal_label",
    "read_meta",
    "save_artifact",
    "seeded_artifact",
]

ARTIFACT_FORMAT = "avarnet-model/1"
META_FILE = "model.json"
WEIGHTS_FILE = "model.pt"


def find_normal_label(labels: Sequence[str]) -> str | None:
    """The label meaning "no anomaly" (``Normal``, ``normal``, XD-Violence's ``A``), if any."""
    for name in labels:
        if name.lower() in ("normal", "a"):
            return name
    return None


def save_artifact(
    path: str | os.PathLike,
    *,
    model_name: str,
    model_kwargs: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    labels: Sequence[str],
    feature_spec: FeatureSpec,
    multilabel: bool = False,
    metrics: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write a model artifact folder atomically (written aside, then renamed)."""
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    meta = {
        "format": ARTIFACT_FORMAT,
        "model_name": model_name,
        "model_kwargs": model_kwargs,
        "labels": list(labels),
        "normal_label": find_normal_label(labels),
        "multilabel": multilabel,
        "feature_spec": feature_spec.to_dict(),
        "metrics": metrics or {},
        "config": config or {},
    }
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp / WEIGHTS_FILE)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=float))
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst


def seeded_artifact(
    path: str | os.PathLike,
    model_name: str,
    feature_spec: FeatureSpec,
    labels: Sequence[str],
    seed: int = 0,
) -> Path:
    """An untrained model artifact with seeded weights, for ``feature_spec`` and ``labels``:
    what serving tests and latency benchmarks need (latency does not depend on what the
    weights learned)."""
    normal = find_normal_label(labels)
    torch.manual_seed(seed)
    model = create_model(
        model_name,
        audio_dim=feature_spec.audio_dim,
        visual_dim=feature_spec.visual_dim,
        num_classes=len(labels),
        normal_index=None if normal is None else list(labels).index(normal),
    )
    return save_artifact(
        path,
        model_name=model_name,
        model_kwargs=model.config["kwargs"],
        state_dict=model.state_dict(),
        labels=labels,
        feature_spec=feature_spec,
    )


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """An artifact folder's ``model.json`` (without loading the weights)."""
    p = Path(path)
    meta_path = p / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{p}: not a model artifact (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{p}: unknown artifact format {meta.get('format')!r}")
    return meta


@dataclass
class Prediction:
    """One clip's prediction.

    ``probabilities``: ``(C,)`` clip-level class probabilities (softmax; sigmoid for
    multi-label models). ``segment_scores``: ``(T,)`` per-segment anomaly score
    (:func:`~avarnet.models.segment_anomaly_scores`): ``1 - p(normal)`` for a softmax
    model, the largest non-normal sigmoid for a multi-label one, the largest class
    probability without a normal class.
    ``segment_top_class``: ``(T,)`` index of the most probable class per segment.
    """

    label: str
    probabilities: np.ndarray
    segment_scores: np.ndarray
    segment_top_class: np.ndarray


class Predictor:
    """Loads an artifact and predicts from features ``(T, Da)``, ``(T, Dv)``."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], device: str = "cpu"):
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = device
        self.labels: list[str] = list(meta["labels"])
        self.multilabel: bool = bool(meta.get("multilabel", False))
        self.spec = FeatureSpec.from_dict(meta["feature_spec"])

    @classmethod
    def from_dir(cls, path: str | os.PathLike, device: str = "cpu") -> Predictor:
        p = Path(path)
        meta = read_meta(p)
        kwargs = dict(meta["model_kwargs"])
        if "fusion_norm" not in kwargs:
            # Written before fusion norms were a setting (artifacts now record every
            # constructor argument): every model then used LayerNorm.
            kwargs["fusion_norm"] = "layer"
        model = create_model(meta["model_name"], **kwargs)
        state = torch.load(p / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return cls(model, meta, device)

    @classmethod
    def load(
        cls,
        uri: str | os.PathLike,
        resolver: Callable[[str], str | os.PathLike] | None = None,
        device: str = "cpu",
    ) -> Predictor:
        """Load from a folder, or from a registry URI through ``resolver`` (URI -> folder)."""
        text = os.fspath(uri)
        if "://" in text or text.startswith(("models:/", "runs:/")):
            if resolver is None:
                raise ValueError(f"{text}: a registry URI needs a resolver (glue.tracking)")
            text = os.fspath(resolver(text))
        return cls.from_dir(text, device)

    @torch.inference_mode()
    def predict(
        self,
        audio: Sequence[np.ndarray],
        visual: Sequence[np.ndarray],
        has_audio: Sequence[bool],
        batch_size: int = 32,
    ) -> list[Prediction]:
        """Predict clips given as ``(T_i, Da)``, ``(T_i, Dv)`` feature arrays."""
        out: list[Prediction] = []
        for s in range(0, len(visual), batch_size):
            batch = pad_batch(
                list(audio[s : s + batch_size]),
                list(visual[s : s + batch_size]),
                list(has_audio[s : s + batch_size]),
            ).to(self.device)
            res = self.model(batch.audio, batch.visual, batch.mask, batch.has_audio)
            clip_logits, seg_logits = res["clip_logits"], res["segment_logits"]
            if self.multilabel:
                clip_p, seg_p = torch.sigmoid(clip_logits), torch.sigmoid(seg_logits)
            else:
                clip_p, seg_p = clip_logits.softmax(-1), seg_logits.softmax(-1)
            scores = self.model.anomaly_scores(seg_logits, batch.mask)
            clip_p, seg_p, scores = clip_p.cpu().numpy(), seg_p.cpu().numpy(), scores.cpu().numpy()
            for i, length in enumerate(batch.lengths.tolist()):
                out.append(
                    Prediction(
                        label=self.labels[int(clip_p[i].argmax())],
                        probabilities=clip_p[i],
                        segment_scores=scores[i, :length],
                        segment_top_class=seg_p[i, :length].argmax(-1),
                    )
                )
        return out

    def describe(self) -> dict[str, Any]:
        """Name, classes and FeatureSpec (for ``GET /v1/model`` and summaries)."""
        return {
            "model_name": self.meta["model_name"],
            "labels": self.labels,
            "multilabel": self.multilabel,
            "feature_spec": self.spec.to_dict(),
            "metrics": self.meta.get("metrics", {}),
        }
