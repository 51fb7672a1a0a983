"""Sizing: how long a dataset takes to extract and train on a cluster, and what bounds it.

Pure arithmetic on measured rates (no Ray, no torch). Extraction is a pipeline of two
stages that overlap (Ray Data streams decoded chunks to the encoders):

- decoding on the CPUs: ``decode_cores x decode rate per core`` clip-seconds per second,
  where ``decode_cores`` are the cluster's cores less one per encoder actor (its own CPU,
  ``features.encoder_cpus``) and one for the driver;
- encoding on the GPUs: ``gpus x encoder rate per GPU``, scaled by the dataset's sampled
  frames per clip-second (the visual share of the encoders' time scales with it, the
  audio share does not);

so extraction runs at ``efficiency x min(decode, encode)`` and the slower stage bounds it.
``cores per GPU`` is what keeps one GPU's encoders fed: ``encode rate / decode rate per
core + 1`` (the encoder actor's own core). Training: one ``avarnet_base`` step per batch,
its time scaled linearly with the segments per clip (capped at ``train.max_segments``) from
the measured step, ``epochs`` passes over the training split, on ``--train-gpus`` GPUs
(linear speed-up assumed; the model is small, one GPU is the default).

Defaults are figures measured in this project, each named with where:

- ``--decode-clip-s-per-core 9.1``: ``avarnet.data.decode.iter_chunks`` on the paper grid
  (1 s segments, 8 frames at 256 px, audio at 16 kHz), one process, on 640 x 360 clips at
  24 fps written by ``avarnet.data.synthetic.generate_benchmark`` (this project's 2-core
  build machine, shared with other jobs). The benchmark's own 128 x 96 clips at 12 fps
  decode at 76 clip-s/s per core on the same machine, 122 in ``benchmarks/decode.py``'s
  README figure (974 sampled frames/s, one process): the source's pixels per second
  set the decoder's cost, so pass a figure measured on your footage
  (``benchmarks/gpu_pipeline.py`` prints it per core).
- ``--encode-clip-s-per-gpu 325``: ``benchmarks/gpu.py`` on one H200, ``full-random``
  encoders (mobilevit_s at 256 px, 8 frames per 1 s segment, + the wav2vec2-base
  configuration), fp32, one 32-segment chunk per call (349 with four; README).
- ``--visual-share 0.75``: the visual backbone's share of the encoders' time,
  ``full-random`` on this project's CPU (0.70 and 0.84 in two runs; not measured on a GPU).
- ``--train-step-ms 30``: ``benchmarks/gpu.py`` on one H200, ``avarnet_base`` (768 + 640-d),
  a batch of 16 clips x 64 segments, AdamW.
- ``--efficiency 1.0``: the pipeline's throughput over min(decode, encode); 1.0 is ideal
  overlap. ``benchmarks/gpu_pipeline.py`` measures it on a GPU machine (target >= 0.8).

Datasets: XD-Violence (4,754 videos, 217 hours; 3,954 for training; 16-frame segments at
24 fps as ``workflows/configs/xd_violence.yaml``: 1.5 segments and 12 sampled frames per
second; 50 epochs) and VAAR (3,000 clips; the paper gives only 5 s to 2 min per clip,
so the midpoint 62.5 s is assumed, ``--vaar-clip-seconds``; 80 % for training; 1 s
segments of 8 frames; 50 epochs as ``workflows/configs/paper.yaml``).

    python benchmarks/capacity.py [--clusters 1x8:64,4x8:64] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass

# The figures measured in this project (see the module docstring for where).
DECODE_CLIP_S_PER_CORE = 9.1
ENCODE_CLIP_S_PER_GPU = 325.0
VISUAL_SHARE = 0.75
TRAIN_STEP_MS = 30.0  # batch 16 x 64 segments
MEASURED_FRAMES_PER_CLIP_S = 8.0  # the encoder figure's grid: 1 s segments of 8 frames
MEASURED_STEP_SEGMENTS, MEASURED_STEP_BATCH = 64, 16
MAX_SEGMENTS = 512  # train.max_segments: longer clips are cut for training


@dataclass(frozen=True)
class Dataset:
    name: str
    clips: int
    clip_seconds: float  # all clips together
    train_clips: int
    segments_per_s: float  # steps of T per second of video
    frames_per_segment: int
    epochs: int = 50

    @property
    def frames_per_clip_s(self) -> float:
        return self.segments_per_s * self.frames_per_segment

    @property
    def mean_segments(self) -> float:
        return self.clip_seconds / self.clips * self.segments_per_s


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    cores_per_node: int

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def cores(self) -> int:
        return self.nodes * self.cores_per_node

    @property
    def label(self) -> str:
        return f"{self.nodes} x {self.gpus_per_node} GPU, {self.cores_per_node} cores"

    @classmethod
    def parse(cls, text: str) -> Cluster:
        """``NODESxGPUS:CORES`` (cores per node), e.g. ``4x8:64``."""
        try:
            nodes_gpus, cores = text.split(":")
            nodes, gpus = nodes_gpus.lower().split("x")
            cluster = cls(int(nodes), int(gpus), int(cores))
        except ValueError:
            raise ValueError(f"cluster {text!r}: expected NODESxGPUS:CORES, e.g. 4x8:64") from None
        if min(cluster.nodes, cluster.gpus_per_node, cluster.cores_per_node) < 1:
            raise ValueError(f"cluster {text!r}: every count must be >= 1")
        return cluster


@dataclass(frozen=True)
class Rates:
    decode_clip_s_per_core: float = DECODE_CLIP_S_PER_CORE
    encode_clip_s_per_gpu: float = ENCODE_CLIP_S_PER_GPU
    visual_share: float = VISUAL_SHARE
    train_step_ms: float = TRAIN_STEP_MS
    efficiency: float = 1.0
    encoder_cpus: float = 1.0  # per encoder actor (features.encoder_cpus)
    train_gpus: int = 1

    def encode_rate(self, data: Dataset) -> float:
        """Clip-seconds per second of one GPU on ``data``'s grid."""
        frames = data.frames_per_clip_s / MEASURED_FRAMES_PER_CLIP_S
        cost = self.visual_share * frames + (1.0 - self.visual_share)
        return self.encode_clip_s_per_gpu / cost


def xd_violence() -> Dataset:
    return Dataset("XD-Violence", 4754, 217 * 3600.0, 3954, 24 / 16, 8, epochs=50)


def vaar(clip_seconds: float = 62.5) -> Dataset:
    return Dataset("VAAR", 3000, 3000 * clip_seconds, 2400, 1.0, 8, epochs=50)


def decode_cores(cluster: Cluster, rates: Rates) -> float:
    """Cores left for decode tasks: less each encoder actor's CPU and one for the driver."""
    return max(0.0, cluster.cores - cluster.gpus * rates.encoder_cpus - 1)


def cores_per_gpu(data: Dataset, rates: Rates) -> float:
    """Cores one GPU needs so that decoding keeps up with its encoders (its actor's
    CPU included)."""
    return rates.encode_rate(data) / rates.decode_clip_s_per_core + rates.encoder_cpus


def train_seconds(data: Dataset, rates: Rates, max_segments: int = MAX_SEGMENTS) -> float:
    """Epochs x steps x the step time at the dataset's mean segments per clip (capped),
    over ``rates.train_gpus`` GPUs."""
    segments = min(max_segments, data.mean_segments)
    step_s = rates.train_step_ms / 1000 * segments / MEASURED_STEP_SEGMENTS
    steps = math.ceil(data.train_clips / MEASURED_STEP_BATCH)
    return data.epochs * steps * step_s / rates.train_gpus


def plan(data: Dataset, cluster: Cluster, rates: Rates) -> dict:
    """The sizing of ``data`` on ``cluster``: stage rates (clip-seconds per second), the
    extraction and training times (seconds) and the bounding stage."""
    decode = decode_cores(cluster, rates) * rates.decode_clip_s_per_core
    encode = cluster.gpus * rates.encode_rate(data)
    rate = rates.efficiency * min(decode, encode)
    extract_s = data.clip_seconds / rate if rate > 0 else math.inf
    train_s = train_seconds(data, rates)
    return {
        "dataset": data.name,
        "cluster": cluster.label,
        "gpus": cluster.gpus,
        "cores": cluster.cores,
        "clip_hours": data.clip_seconds / 3600,
        "decode_cores": decode_cores(cluster, rates),
        "decode_clip_s_per_s": decode,
        "encode_clip_s_per_s": encode,
        "bound": "decode (CPU)" if decode < encode else "encode (GPU)",
        "cores_per_gpu_needed": cores_per_gpu(data, rates),
        "cores_per_gpu_have": cluster.cores_per_node / cluster.gpus_per_node,
        "extract_hours": extract_s / 3600,
        "gpu_busy_fraction": min(1.0, decode / encode) if encode > 0 else 0.0,
        "train_hours": train_s / 3600,
        "total_hours": (extract_s + train_s) / 3600,
    }


def _table(rows: list[dict]) -> str:
    head = (
        f"{'dataset':<12} {'cluster':<22} {'clip-h':>7} {'decode':>8} {'encode':>8} "
        f"{'bound':<13} {'cores/GPU need/have':>19} {'GPU busy':>8} {'extract h':>9} "
        f"{'train h':>7} {'total h':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['dataset']:<12} {r['cluster']:<22} {r['clip_hours']:>7.0f} "
            f"{r['decode_clip_s_per_s']:>8.0f} {r['encode_clip_s_per_s']:>8.0f} {r['bound']:<13} "
            f"{r['cores_per_gpu_needed']:>10.1f} / {r['cores_per_gpu_have']:<6.1f} "
            f"{100 * r['gpu_busy_fraction']:>7.0f}% {r['extract_hours']:>9.2f} "
            f"{r['train_hours']:>7.2f} {r['total_hours']:>7.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clusters", default="1x8:64,4x8:64", help="NODESxGPUS:CORES, comma-separated")
    ap.add_argument("--decode-clip-s-per-core", type=float, default=DECODE_CLIP_S_PER_CORE)
    ap.add_argument("--encode-clip-s-per-gpu", type=float, default=ENCODE_CLIP_S_PER_GPU)
    ap.add_argument("--visual-share", type=float, default=VISUAL_SHARE)
    ap.add_argument("--train-step-ms", type=float, default=TRAIN_STEP_MS)
    ap.add_argument("--efficiency", type=float, default=1.0, help="(c) / min(a, b), measured")
    ap.add_argument("--encoder-cpus", type=float, default=1.0, help="CPUs per encoder actor")
    ap.add_argument("--train-gpus", type=int, default=1, help="GPUs training (linear speed-up)")
    ap.add_argument("--vaar-clip-seconds", type=float, default=62.5, help="mean VAAR clip length")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    rates = Rates(
        decode_clip_s_per_core=args.decode_clip_s_per_core,
        encode_clip_s_per_gpu=args.encode_clip_s_per_gpu,
        visual_share=args.visual_share,
        train_step_ms=args.train_step_ms,
        efficiency=args.efficiency,
        encoder_cpus=args.encoder_cpus,
        train_gpus=args.train_gpus,
    )
    clusters = [Cluster.parse(c) for c in args.clusters.split(",")]
    datasets = [xd_violence(), vaar(args.vaar_clip_seconds)]
    rows = [plan(d, c, rates) for d in datasets for c in clusters]
    if args.json:
        print(json.dumps({"rates": asdict(rates), "plans": rows}, indent=2))
        return
    print(
        f"rates: decode {rates.decode_clip_s_per_core:g} clip-s/s per core, encode "
        f"{rates.encode_clip_s_per_gpu:g} clip-s/s per GPU at 8 frames per clip-second "
        f"(visual share {rates.visual_share:g}), training step {rates.train_step_ms:g} ms per "
        f"16 x 64 segments on {rates.train_gpus} GPU(s), efficiency {rates.efficiency:g}"
    )
    print(_table(rows))
    print(
        "decode / encode: the stages' clip-seconds per second on the whole cluster; cores/GPU: "
        "what keeps one GPU's encoders fed (its actor's core included) / what the nodes have; "
        "GPU busy: the encoders' share of time spent working when decoding bounds."
    )


if __name__ == "__main__":
    main()
