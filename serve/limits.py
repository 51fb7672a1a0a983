"""What the service may cost: per request (:class:`ClipLimits`, checked from the container
before anything is decoded) and per cluster (:func:`fit_resources`, the replicas' CPUs and
the autoscaling ceilings fitted to what the cluster can place)."""

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serve.app import AppArgs

__all__ = ["INGRESS_CPUS", "ClipLimits", "fit_resources"]

logger = logging.getLogger("ray.serve")

# The Ingress only streams uploads to disk and forwards them: a tenth of a CPU is enough.
INGRESS_CPUS = 0.1

BATCH_SCORING_HINT = "split it, or score long footage offline in batch (README: Serving limits)"


@dataclass(frozen=True)
class ClipLimits:
    """What one request may cost, checked from the container before anything is decoded.
    0 turns a limit off."""

    max_seconds: float = 0.0
    max_pixels: int = 0
    max_segments: int = 0

    def problem(
        self, *, duration_s: float | None, width: int, height: int, n_segments: int | None = None
    ) -> str | None:
        """Why a clip is over a limit (one line for the client), or ``None``."""
        if self.max_pixels and width * height > self.max_pixels:
            return (
                f"frames of {width}x{height} pixels are over this service's limit of "
                f"{self.max_pixels} pixels per frame (serve.max_frame_pixels)"
            )
        if self.max_seconds and duration_s is not None and duration_s > self.max_seconds:
            return (
                f"the clip is {duration_s:.1f} s long; this service scores clips of up to "
                f"{self.max_seconds:g} s (serve.max_clip_seconds): {BATCH_SCORING_HINT}"
            )
        if self.max_segments and n_segments is not None and n_segments > self.max_segments:
            return (
                f"the clip has {n_segments} segments; this service scores clips of up to "
                f"{self.max_segments} segments (serve.max_segments): {BATCH_SCORING_HINT}"
            )
        return None


def fit_resources(a: "AppArgs", nodes: list[dict[str, Any]] | None = None) -> "AppArgs":
    """``a`` with per-replica CPUs chosen (where 0) and the Encoder's autoscaling ceiling
    capped to what the cluster can hold, so that Serve never waits for a replica that
    cannot be placed (on a 2-CPU laptop: Encoders of 0.5 CPU, at most 2 of them).

    ``nodes``: ``ray.nodes()`` (default: the current cluster's, when Ray is initialised).
    Without them, or with ``fit_resources`` off, only the zeros are replaced (1 CPU per
    Encoder, 0.5 per Classifier) and the ceilings are left as asked.
    """
    if nodes is None and a.fit_resources:
        import ray

        nodes = ray.nodes() if ray.is_initialized() else None
    if not a.fit_resources:
        nodes = None
    from glue.runtime import label_matches, unplaceable

    live = [n for n in (nodes or []) if n.get("Alive", True)]
    everywhere = sum(float(n.get("Resources", {}).get("CPU", 0.0)) for n in live)
    # Only the nodes the Encoder's labels allow can hold Encoder replicas.
    alive = [
        n.get("Resources", {})
        for n in live
        if label_matches(a.encoder_labels, n.get("Labels") or {})
    ]
    cpus = [float(r.get("CPU", 0.0)) for r in alive]
    small = bool(cpus) and max(cpus) < 4
    encoder_cpus = a.encoder_cpus or (0.5 if small else 1.0)
    classifier_cpus = a.classifier_cpus or (0.2 if small else 0.5)
    out = dataclasses.replace(a, encoder_cpus=encoder_cpus, classifier_cpus=classifier_cpus)
    why = unplaceable(a.encoder_labels, {"CPU": encoder_cpus, "GPU": a.encoder_gpus}, live)
    if live and why:
        logger.warning("avarnet: Encoder replicas wait until a node that fits joins: %s", why)
    if not cpus:
        return out
    # What the other deployments may take at their ceilings (on the Encoder's nodes, at
    # worst).
    others = a.ingress_max_replicas * INGRESS_CPUS + a.classifier_max_replicas * classifier_cpus
    fit = int((min(sum(cpus), everywhere - others)) / encoder_cpus + 1e-9)
    if a.encoder_gpus > 0:
        gpus = sum(float(r.get("GPU", 0.0)) for r in alive)
        fit = min(fit, int(gpus / a.encoder_gpus + 1e-9))
    ceiling = max(a.encoder_min_replicas, min(a.encoder_max_replicas, fit))
    if ceiling < a.encoder_max_replicas:
        logger.info(
            "avarnet: Encoder replicas capped at %d (%.2g CPU each; the cluster has %.3g CPUs)",
            ceiling,
            encoder_cpus,
            sum(cpus),
        )
    return dataclasses.replace(out, encoder_max_replicas=ceiling)
