"""Configuration: frozen dataclasses, one per concern, loaded from YAML.

Unknown keys are rejected with the list of known ones, values are type-checked, and
``section.key=value`` overrides (values parsed as YAML) apply on top of a file::

    cfg = load_config("workflows/configs/demo.yaml", ["train.epochs=5", "model.fusion=audio"])
    save_config(cfg, run_dir / "config.yaml")   # the resolved config, beside every run
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "FeaturesConfig",
    "ModelConfig",
    "ServeConfig",
    "SynthConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "Labels",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_labels",
    "save_config",
]


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


# Where a kind of work runs: Ray node labels it requires (``ray start --labels k=v``), as a
# mapping, or "k=v,k2=v2" on a command line. Values are Ray's label-selector values:
# ``gpu``, ``!gpu``, ``in(a,b)``, ``!in(a,b)``. Empty: any node.
Labels = dict[str, str]


def parse_labels(value: Any, where: str) -> dict[str, str]:
    """A label selector from a mapping or a ``k=v,k2=v2`` string (``{}`` for "" or None)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        pairs = [p.strip() for p in _split_top_level(value) if p.strip()]
        out = {}
        for pair in pairs:
            key, sep, val = pair.partition("=")
            if not sep or not key.strip() or not val.strip():
                raise ConfigError(f"{where}: {pair!r} is not of the form label=value")
            out[key.strip()] = val.strip()
        return out
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected label=value pairs, got {value!r}")
    for k, v in value.items():
        if not isinstance(k, str) or not k or isinstance(v, bool) or v is None:
            raise ConfigError(f"{where}: expected label: value strings, got {k!r}: {v!r}")
    return {k: str(v) for k, v in value.items()}


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses (``pool=in(a,b),zone=x`` is two pairs)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        names = ", ".join("null" if a is None else str(a) for a in allowed)
        raise ConfigError(f"{key}: {value!r} is not one of {names}")


@dataclass(frozen=True)
class SynthConfig:
    """The generated audio-visual benchmark (used when ``data.path`` is empty)."""

    clips_per_class: int = 8
    seconds: float = 4.0
    seed: int = 0
    fps: int = 12
    degrade_fraction: float = 0.3
    no_audio_fraction: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    """Where the videos are. ``path`` empty means: generate the benchmark under ``output_dir``."""

    path: str = ""
    format: str = "auto"  # auto | folders | csv | xd-violence
    annotations: str | None = None  # XD-Violence test annotations file
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)


# The encoders' arithmetic (FeatureSpec.precision).
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class FeaturesConfig:
    """Feature extraction (Ray Data). Backbone fields override the preset's when set."""

    preset: str = "tiny"  # tiny | paper | full-random
    audio_backbone: str | None = None  # HF model id or local dir
    visual_backbone: str | None = None  # timm model name
    visual_weights: str | None = None  # "pretrained", a checkpoint path, or "random"
    segment_seconds: float | None = None
    segment_frames: int | None = None  # XD-Violence: 16
    frames_per_segment: int | None = None
    # The backbone stages whose feature maps (max-pooled over space) make the visual
    # features; [] = the backbone's pooled output. None: the preset's (tiny: [0, 1, 2]).
    visual_stages: tuple[int, ...] | None = None
    workers: int = 1  # encoder actors
    gpus_per_worker: float = 0.0
    encoder_cpus: float = 1.0  # CPUs reserved per encoder actor
    # torch threads per encoder actor: None = Ray's default (its CPUs), 0 = every core
    threads_per_worker: int | None = None
    decode_workers: int | None = None  # concurrent decode tasks (None: as CPUs allow)
    decode_cpus: float = 1.0  # CPUs reserved per decode task
    clips_per_task: int = 1  # clips per decode task (more: less per-task overhead)
    batch_size: int = 4  # chunks per encoder call
    # Segments decoded and encoded together: Wav2Vec2's audio context, so part of the
    # FeatureSpec. None: the spec's default (avarnet.features.spec.DEFAULT_CHUNK_SEGMENTS).
    chunk_segments: int | None = None
    # The encoders' arithmetic: fp32 | bf16 | fp16 (autocast; meant for CUDA). Part of the
    # FeatureSpec (the features differ slightly). None: the spec's default (fp32).
    precision: str | None = None
    # Node labels the decode tasks / encoder actors need (e.g. decode on CPU nodes,
    # encoders on GPU nodes); empty: any node.
    decode_labels: Labels = field(default_factory=dict)
    encoder_labels: Labels = field(default_factory=dict)
    # Refuse an encoder pool that leaves no CPU for decoding on the cluster as it is (it
    # would wait forever); false on an autoscaling cluster, where nodes join on demand.
    fit_resources: bool = True

    def __post_init__(self) -> None:
        _one_of("features.precision", self.precision, (None, *PRECISIONS))


@dataclass(frozen=True)
class ModelConfig:
    """The classifier: a registered model name, fusion mode and overrides of its defaults."""

    name: str = "avarnet_tiny"  # avarnet_tiny | avarnet_base
    fusion: str = "early"  # early | late | audio | visual
    num_stages: int | None = None
    num_layers: int | None = None
    num_filters: int | None = None
    dropout: float | None = None
    pooling: str | None = None  # mean | topk
    # Off by default: on the 12-clips-per-class benchmark 0.2 was mixed (better with a
    # LayerNorm-only model, no better with the default fusion norm; README, Model and
    # training); turn it on for data with missing or unreliable streams.
    modality_dropout: float = 0.0

    def __post_init__(self) -> None:
        _one_of("model.fusion", self.fusion, ("early", "late", "audio", "visual"))
        _one_of("model.pooling", self.pooling, (None, "mean", "topk"))
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ConfigError(
                f"model.modality_dropout: expected 0 <= p < 1, got {self.modality_dropout}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Training (Ray Train)."""

    # The recipe was chosen on the 12-clips-per-class benchmark (80 training clips; README,
    # Model and training): 30 epochs at 1e-3 stopped while still improving (best epoch =
    # last epoch); 60 epochs at 3e-3 with a 3-epoch warm-up and a cosine decay converge and
    # end at a low learning rate, so the best-on-validation epoch is not a noisy peak.
    epochs: int = 60
    batch_size: int = 16  # the global batch: N training workers take batch_size / N each
    lr: float = 3e-3
    weight_decay: float = 0.05  # AdamW; 1e-4 was weaker on small data (0.77 vs 0.82)
    smoothing_weight: float = 0.15
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    # torch threads per training worker: None = Ray's default (its CPUs), 0 = every core
    threads_per_worker: int | None = None
    worker_labels: Labels = field(default_factory=dict)  # node labels training workers need
    # Each worker keeps its shard in memory after the first epoch (up to this many MB per
    # split; 0 streams every epoch through Ray Data).
    cache_mb: float = 1024.0
    seed: int = 0
    max_failures: int = 1
    max_segments: int = 512  # longer clips are cut to this many steps for training
    # The recipe (avarnet.training): label smoothing of the classification term, a linear
    # warm-up then a constant or cosine learning rate, gradient clipping, early stopping.
    label_smoothing: float = 0.0  # 0.1 measured no better
    warmup_epochs: int = 3
    schedule: str = "cosine"  # constant | cosine
    min_lr_ratio: float = 0.0  # where the cosine schedule ends, as a fraction of lr
    grad_clip: float | None = None
    patience: int | None = None  # stop after this many epochs without a better val score
    ema_decay: float | None = 0.99  # val/keep a moving average of weights; see README
    mixup: float = 0.0  # Beta(a, a) mixup of clips within a batch; 0 = off
    feature_noise: float = 0.0  # Gaussian feature noise, x each feature's batch std; 0 = off
    # Several seeds: one model each, metrics as mean and std, the best on validation
    # registered (None: just ``seed``).
    seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _one_of("train.schedule", self.schedule, ("constant", "cosine"))
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"train.label_smoothing: expected 0 <= s < 1, got {self.label_smoothing}"
            )
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"train.patience: expected >= 1 or null, got {self.patience}")
        if self.seeds is not None and not self.seeds:
            raise ConfigError("train.seeds: give at least one seed, or null")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay: expected 0 < d < 1 or null, got {self.ema_decay}")
        if self.mixup < 0 or self.feature_noise < 0:
            raise ConfigError("train.mixup and train.feature_noise: expected >= 0")


@dataclass(frozen=True)
class TuneConfig:
    """Hyperparameter search (Ray Tune)."""

    trials: int = 8
    max_concurrent: int = 1
    time_budget_s: float | None = None
    grace_period: int = 2  # epochs before ASHA may stop a trial
    reduction_factor: int = 2
    cpus_per_trial: float = 1.0  # per training worker of a trial (train.cpus_per_worker)
    gpus_per_trial: float = 0.0  # per training worker of a trial (train.gpus_per_worker)
    # Config key -> {loguniform: [lo, hi]} | {uniform: [lo, hi]} | {choice: [...]};
    # None: tune.search.SEARCH_SPACE.
    space: dict[str, Any] | None = None
    # The configuration as given is trained too (one extra trial) and stays the champion
    # unless a searched trial beats its validation score by more than this margin.
    baseline: bool = True
    min_improvement: float = 0.0


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow. ``tracking_uri`` empty: ``MLFLOW_TRACKING_URI`` or a sqlite store in ``output_dir``."""

    tracking_uri: str | None = None
    experiment: str = "avarnet"
    registered_model: str = "avarnet"


@dataclass(frozen=True)
class ServeConfig:
    """Online scoring (Ray Serve). Every setting is also a ``build_app`` argument
    (``serve/config.yaml``'s ``args``, ``serve run serve.app:build_app key=value``), except
    ``host`` and ``port``, which are Serve's HTTP options. Limits: 0 turns one off."""

    model_uri: str = "models:/avarnet@champion"  # build_app's `model`
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 200.0
    # Per request, checked from the container before decoding (413); 0: no limit. Longer
    # footage is for batch scoring. 300 s is about 5 min of Encoder time per clip for the
    # full-size backbones on one CPU core, under 10 s on a GPU.
    max_clip_seconds: float = 300.0
    max_frame_pixels: int = 3840 * 2160  # width x height (4K UHD)
    max_segments: int = 1024
    long_clip_seconds: float = 30.0  # longer clips are encoded outside the batches
    upload_idle_timeout_s: float = 30.0  # an upload that stalls this long is cut (408)
    # Where uploads are spooled while a request runs (up to max_upload_mb each, removed
    # when it ends); an absolute path on every Ingress / Encoder node. Empty: the system's
    # temporary directory.
    upload_dir: str = ""
    encoder_cpus: float = 0.0  # per Encoder replica (also its torch threads); 0: fit the node
    encoder_gpus: float = 0.0  # per Encoder replica; > 0 runs the encoders on CUDA
    encoder_min_replicas: int = 1  # the Encoder's autoscaling range
    encoder_max_replicas: int = 2
    # The autoscaler's target of ongoing requests per Encoder replica.
    target_ongoing_requests: float = 1.0
    max_batch_size: int = 4  # clips per Encoder batch (@serve.batch)
    # How long a batch waits to fill; 0: take what is queued (under load, requests queue
    # while a batch runs, so batches still form).
    batch_wait_timeout_s: float = 0.0
    threads: int = 0  # torch threads per Encoder replica; 0: its reserved CPUs (at least 1)
    classifier_cpus: float = 0.0  # per Classifier replica; 0: 0.5 (0.2 on nodes under 4 CPUs)
    classifier_max_replicas: int = 2
    classifier_max_batch_size: int = 16  # clips per Classifier batch
    ingress_max_replicas: int = 2
    # Node labels the Encoder / Classifier replicas need; empty: any node. (HTTP proxies
    # run on every node, the Ingress anywhere.)
    encoder_labels: Labels = field(default_factory=dict)
    classifier_labels: Labels = field(default_factory=dict)
    fit_resources: bool = True  # cap replica ceilings to the cluster's CPUs/GPUs at deploy

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, want: str) -> None:
            if not ok:
                raise ConfigError(f"serve.{key} must be {want}, got {getattr(self, key)!r}")

        check(self.max_upload_mb > 0, "max_upload_mb", "> 0")
        check(self.upload_idle_timeout_s > 0, "upload_idle_timeout_s", "> 0")
        check(
            not self.upload_dir or os.path.isabs(self.upload_dir),
            "upload_dir",
            "an absolute path (replicas run in other directories, on other nodes) or empty",
        )
        for key in ("max_clip_seconds", "max_frame_pixels", "max_segments", "encoder_cpus"):
            check(getattr(self, key) >= 0, key, ">= 0 (0: no limit / fit the node)")
        for key in ("encoder_gpus", "classifier_cpus", "batch_wait_timeout_s", "threads"):
            check(getattr(self, key) >= 0, key, ">= 0")
        check(self.encoder_min_replicas >= 1, "encoder_min_replicas", ">= 1")
        check(
            self.encoder_max_replicas >= self.encoder_min_replicas,
            "encoder_max_replicas",
            f">= encoder_min_replicas ({self.encoder_min_replicas})",
        )
        replicas = ("classifier_max_replicas", "ingress_max_replicas")
        for key in ("max_batch_size", "classifier_max_batch_size", *replicas):
            check(getattr(self, key) >= 1, key, ">= 1")
        check(self.target_ongoing_requests > 0, "target_ongoing_requests", "> 0")


@dataclass(frozen=True)
class Config:
    """The whole workflow's configuration."""

    output_dir: str = "runs/demo"
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if tp == Labels:
        return parse_labels(value, where)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is tuple and typing.get_args(tp)[-1:] == (Ellipsis,):
        (arg, _) = typing.get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [v for v in str(value).split(",") if v.strip()]  # "0,1,2" on a CLI
            value = [yaml.safe_load(v) for v in value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {tp}")


def _from_dict(cls: type, data: dict, where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known keys{' of ' + where if where else ''}: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict | None) -> Config:
    """Build a :class:`Config` from a nested mapping (missing keys take their defaults)."""
    return _from_dict(Config, data or {})


def config_to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts/lists (YAML- and JSON-serialisable)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``section.key=value`` overrides; values are parsed as YAML (``3``, ``1e-3``,
    ``null``, ``[0.8, 0.1, 0.1]``)."""
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = node[part]
        if parts[-1] not in node:
            known = ", ".join(node)
            raise ConfigError(f"override {item!r}: unknown key {key!r}; known keys here: {known}")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return config_from_dict(data)


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    try:
        cfg = config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None
    return apply_overrides(cfg, overrides or [])


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically) and return its path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    os.replace(tmp, p)
    return p
