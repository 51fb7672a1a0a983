"""The training step, framework-free: collation, the learning-rate schedule, one epoch of
optimisation, evaluation over batches, best-epoch selection with early stopping, and a
plain in-process loop (:func:`fit`).

Everything here works on pyarrow tables of feature rows (the feature table's columns
``label``, ``labels``, ``audio``, ``visual``, ``has_audio``), so the same code serves
the Ray Train loop (whose shards yield pyarrow batches; :mod:`glue.train` keeps only
what is Ray's: shards, reports, checkpoints), the Tune trials and the benchmarks.

The recipe (see :class:`Recipe`, read from ``TrainConfig``): AdamW, a linear warm-up then
a cosine decay of the learning rate (set per epoch from the epoch number alone, so a
resumed run needs no scheduler state), label smoothing on the classification term,
gradient clipping, optional feature noise and mixup (:func:`augment`), a moving average
of the weights (``ema_decay``: :func:`update_ema`, kept in the optimiser's state so that
checkpoints carry it) which is what is validated and kept, and the model of the epoch with
the best validation score, training stopping once ``patience`` epochs have passed without
a better one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from avarnet.batching import Batch, pad_batch
from avarnet.config import TrainConfig
from avarnet.features import table as ft
from avarnet.metrics import classification_metrics
from avarnet.models.losses import avarnet_loss

__all__ = [
    "BestTracker",
    "FitResult",
    "Recipe",
    "collate",
    "augment",
    "ema_weights",
    "evaluate_batches",
    "fit",
    "lr_at",
    "run_epoch",
    "table_batches",
    "train_epoch",
    "update_ema",
    "val_score",
]

# Columns a training batch needs.
COLUMNS = ["label", "labels", "split", "audio", "visual", "has_audio"]


_TRAIN = TrainConfig()


@dataclass(frozen=True)
class Recipe:
    """How a model is optimised: every field is the ``train.*`` config key of that name,
    and its default is ``TrainConfig``'s (one source per setting)."""

    epochs: int = _TRAIN.epochs
    batch_size: int = _TRAIN.batch_size
    lr: float = _TRAIN.lr
    weight_decay: float = _TRAIN.weight_decay
    smoothing_weight: float = _TRAIN.smoothing_weight
    label_smoothing: float = _TRAIN.label_smoothing
    warmup_epochs: int = _TRAIN.warmup_epochs
    schedule: str = _TRAIN.schedule
    min_lr_ratio: float = _TRAIN.min_lr_ratio
    grad_clip: float | None = _TRAIN.grad_clip
    patience: int | None = _TRAIN.patience
    max_segments: int | None = _TRAIN.max_segments
    seed: int = _TRAIN.seed
    ema_decay: float | None = _TRAIN.ema_decay
    mixup: float = _TRAIN.mixup
    feature_noise: float = _TRAIN.feature_noise

    @classmethod
    def from_config(cls, train_cfg: Any) -> Recipe:
        """The recipe of a ``TrainConfig`` (or of any object with the same attributes)."""
        names = [f.name for f in cls.__dataclass_fields__.values()]
        return cls(**{n: getattr(train_cfg, n) for n in names if hasattr(train_cfg, n)})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def lr_at(epoch: int, recipe: Recipe) -> float:
    """The learning rate of ``epoch`` (0-based): linear warm-up over ``warmup_epochs``
    (from lr / (warmup + 1)), then constant or a cosine decay to ``lr * min_lr_ratio`` at
    the last epoch."""
    base = recipe.lr
    warm = max(recipe.warmup_epochs, 0)
    if epoch < warm:
        return base * (epoch + 1) / (warm + 1)
    if recipe.schedule == "constant":
        return base
    span = max(recipe.epochs - warm - 1, 1)
    progress = min(max(epoch - warm, 0) / span, 1.0)
    floor = base * recipe.min_lr_ratio
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def collate(
    table: pa.Table,
    labels: list[str],
    multilabel: bool,
    max_len: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[Batch, torch.Tensor]:
    """A pyarrow table of feature rows -> (padded :class:`Batch`, targets): class indices
    ``(B,)``, or multi-hot ``(B, C)`` floats for a multi-label model. Clips longer than
    ``max_len`` steps are cut to a window (random when ``rng`` is given)."""
    audio = ft.nested_to_numpy(table.column("audio"))
    visual = ft.nested_to_numpy(table.column("visual"))
    has_audio = table.column("has_audio").to_pylist()
    batch = pad_batch(audio, visual, has_audio, max_len=max_len, rng=rng)
    index = {name: i for i, name in enumerate(labels)}
    if multilabel:
        targets = torch.zeros(len(audio), len(labels))
        for i, names in enumerate(table.column("labels").to_pylist()):
            for name in names:
                targets[i, index[name]] = 1.0
    else:
        targets = torch.tensor([index[name] for name in table.column("label").to_pylist()])
    return batch, targets


def table_batches(
    table: pa.Table,
    batch_size: int,
    *,
    seed: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[pa.Table]:
    """Batches of rows of an in-memory table, shuffled by ``seed`` (None: in order).

    With ``world_size`` > 1, worker ``rank``'s share of one epoch, as data-parallel
    training needs it: every worker draws the same permutation and takes every
    ``world_size``-th row of it from ``rank`` on, the permutation first wrapped round to a
    multiple of ``world_size`` rows (as ``DistributedSampler`` pads), so that every worker
    runs the same number of steps. Step ``k`` of the workers together then sees exactly
    the rows of step ``k`` of one process with ``batch_size * world_size``: the same
    global batches, whatever the number of workers."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    n = table.num_rows
    order = np.random.default_rng(seed).permutation(n) if seed is not None else np.arange(n)
    if world_size > 1 and n:
        order = np.resize(order, -(-n // world_size) * world_size)[rank::world_size]
    for i in range(0, len(order), batch_size):
        yield table.take(order[i : i + batch_size])


def _loss(model, batch: Batch, targets, recipe: Recipe, multilabel: bool, mix=None):
    """The model's outputs and loss; ``mix = (lam, perm)``: the batch was mixed with its
    permutation ``perm`` and the loss is ``lam * L(targets) + (1 - lam) * L(targets[perm])``."""
    out = model(batch.audio, batch.visual, batch.mask, batch.has_audio)

    def loss_of(t):
        return avarnet_loss(
            out,
            t,
            batch.mask,
            multilabel=multilabel,
            smoothing_weight=recipe.smoothing_weight,
            label_smoothing=recipe.label_smoothing,
        )[0]

    if mix is None:
        return out, loss_of(targets)
    lam, perm = mix
    return out, lam * loss_of(targets) + (1.0 - lam) * loss_of(targets[perm])


def augment(
    batch: Batch, recipe: Recipe, rng: np.random.Generator
) -> tuple[Batch, tuple[float, torch.Tensor] | None]:
    """The training batch's augmentation: Gaussian feature noise (``feature_noise`` x each
    feature's std over the batch's valid steps) and mixup of clips (``mixup``: Beta(a, a)
    weights, the union of the two clips' masks). Returns the batch and the mix (or None)."""
    audio, visual, mask, has_audio = batch.audio, batch.visual, batch.mask, batch.has_audio
    if recipe.feature_noise > 0:
        valid = mask.unsqueeze(-1).to(audio.dtype)

        def noisy(x):
            std = x[mask].std(0) if bool(mask.any()) else x.new_zeros(x.shape[-1])
            gen = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
            return x + recipe.feature_noise * std * gen.to(x.device) * valid

        audio, visual = noisy(audio), noisy(visual)
    mix = None
    if recipe.mixup > 0 and len(mask) > 1:
        lam = float(rng.beta(recipe.mixup, recipe.mixup))
        perm = torch.from_numpy(rng.permutation(len(mask))).to(mask.device)
        audio = lam * audio + (1.0 - lam) * audio[perm]
        visual = lam * visual + (1.0 - lam) * visual[perm]
        mask, has_audio = mask | mask[perm], has_audio | has_audio[perm]
        mix = (lam, perm)
    return Batch(audio, visual, mask, has_audio, mask.sum(1)), mix


def _params(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for group in optimizer.param_groups:
        yield from group["params"]


def update_ema(optimizer: torch.optim.Optimizer, decay: float) -> None:
    """One step of the moving average of the weights, kept in the optimiser's state (``ema``
    beside each parameter's moments: saved and restored with it, so a resumed run keeps
    it). The decay warms up as timm's ``ModelEma``: ``min(decay, (1 + n) / (10 + n))`` at
    update n, so over a short run (300 steps: at most 0.97) it averages the last ~n/9
    steps, a window growing with training, rather than a fixed horizon."""
    with torch.no_grad():
        for p in _params(optimizer):
            state = optimizer.state[p]
            if "ema" not in state:
                state["ema"] = p.detach().clone()
                state["ema_updates"] = torch.zeros((), dtype=p.dtype, device=p.device)
                continue
            n = float(state["ema_updates"]) + 1.0
            d = min(decay, (1.0 + n) / (10.0 + n))
            state["ema"].mul_(d).add_(p.detach(), alpha=1.0 - d)
            state["ema_updates"].fill_(n)


@contextmanager
def ema_weights(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """The optimiser's parameters hold their :func:`update_ema` average inside (nothing
    changes without one); the training weights come back on exit."""
    pairs = [
        (p, optimizer.state[p]["ema"])
        for p in _params(optimizer)
        if "ema" in optimizer.state.get(p, {})
    ]
    saved = [p.detach().clone() for p, _ in pairs]
    with torch.no_grad():
        for p, ema in pairs:
            p.copy_(ema)
    try:
        yield
    finally:
        with torch.no_grad():
            for (p, _), keep in zip(pairs, saved):
                p.copy_(keep)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_epoch(
    model: torch.nn.Module,
    batches: Iterable[pa.Table],
    optimizer: torch.optim.Optimizer,
    recipe: Recipe,
    *,
    epoch: int,
    labels: list[str],
    multilabel: bool,
    rng: np.random.Generator,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """One pass of optimisation over ``batches`` at :func:`lr_at` ``(epoch)``; returns
    ``train_loss`` (mean per clip), ``lr`` and ``epoch_seconds``."""
    model.train()
    lr = lr_at(epoch, recipe)
    set_lr(optimizer, lr)
    t0 = time.perf_counter()
    total, count = 0.0, 0
    for table in batches:
        batch, targets = collate(table, labels, multilabel, recipe.max_segments, rng)
        batch, targets = batch.to(device), targets.to(device)
        batch, mix = augment(batch, recipe, rng)
        _, loss = _loss(model, batch, targets, recipe, multilabel, mix)
        optimizer.zero_grad()
        loss.backward()
        if recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        if recipe.ema_decay:
            update_ema(optimizer, recipe.ema_decay)
        total += loss.item() * len(targets)
        count += len(targets)
    return {
        "train_loss": total / max(count, 1),
        "lr": lr,
        "epoch_seconds": time.perf_counter() - t0,
    }


def val_score(macro_f1: float, loss: float) -> float:
    """What selects the best epoch and ranks Tune trials: validation macro-F1, ties
    (frequent on small validation sets) broken by the loss."""
    return float(macro_f1) - 1e-3 * min(float(loss), 100.0)


def evaluate_batches(
    model: torch.nn.Module,
    batches: Iterable[pa.Table],
    *,
    labels: list[str],
    multilabel: bool,
    recipe: Recipe,
    device: torch.device | str = "cpu",
    prefix: str = "val",
) -> dict[str, float]:
    """Loss, accuracy, macro-F1 and :func:`val_score` over batches of feature rows
    (``{}`` when there are none); keys start with ``prefix``."""
    model.eval()
    y_true: list[int] = []
    y_pred: list[int] = []
    losses: list[float] = []
    with torch.inference_mode():
        for table in batches:
            batch, targets = collate(table, labels, multilabel, None, None)
            batch, targets = batch.to(device), targets.to(device)
            out, loss = _loss(model, batch, targets, recipe, multilabel)
            losses.append(float(loss) * len(targets))
            y_pred.extend(out["clip_logits"].argmax(-1).cpu().numpy().tolist())
            true = targets.argmax(-1) if multilabel else targets
            y_true.extend(true.cpu().numpy().tolist())
    if not y_true:
        return {}
    m = classification_metrics(np.array(y_true), np.array(y_pred), labels)
    loss = float(np.sum(losses) / len(y_true))
    return {
        f"{prefix}_loss": loss,
        f"{prefix}_accuracy": float(m["accuracy"]),
        f"{prefix}_macro_f1": float(m["macro_f1"]),
        f"{prefix}_score": val_score(m["macro_f1"], loss),
    }


@dataclass
class BestTracker:
    """The best epoch so far by validation score (without validation: the latest epoch),
    its weights, and whether ``patience`` epochs have passed without a better one.

    Plain data (:meth:`to_dict`) goes into checkpoints, so a resumed run keeps its best.
    """

    patience: int | None = None
    score: float = -math.inf
    epoch: int = -1
    val_macro_f1: float = -1.0
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def update(self, epoch: int, metrics: dict[str, float], model: torch.nn.Module) -> bool:
        """Record ``epoch``; True when it is the best so far (its weights are kept)."""
        score = metrics.get("val_score", float(epoch))
        if score <= self.score:
            return False
        self.score, self.epoch = score, epoch
        self.val_macro_f1 = metrics.get("val_macro_f1", self.val_macro_f1)
        self.state = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
        return True

    def should_stop(self, epoch: int) -> bool:
        return self.patience is not None and self.epoch >= 0 and epoch - self.epoch >= self.patience

    def to_dict(self) -> dict[str, float]:
        return {"score": self.score, "epoch": self.epoch, "val_macro_f1": self.val_macro_f1}

    @classmethod
    def from_dict(cls, data: dict, patience: int | None, state=None) -> BestTracker:
        # Checkpoints written before the score was recorded carry the macro-F1 only.
        score = data.get("score", data.get("val_macro_f1", -math.inf))
        return cls(patience, score, data["epoch"], data.get("val_macro_f1", -1.0), state)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


def run_epoch(
    model: torch.nn.Module,
    train_batches: Iterable[pa.Table],
    val_batches: Iterable[pa.Table],
    optimizer: torch.optim.Optimizer,
    recipe: Recipe,
    best: BestTracker,
    *,
    epoch: int,
    labels: list[str],
    multilabel: bool,
    rng: np.random.Generator,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """One epoch as every training loop runs it (:func:`fit`, the Ray Train loop): a
    training pass, a validation pass, the best epoch updated. Returns the epoch's metrics
    with ``best_val_macro_f1``, ``best_val_score``, ``best_epoch`` and ``converged`` (1.0
    once ``patience`` epochs passed without a better validation score)."""
    metrics: dict[str, float] = {"epoch": epoch}
    metrics.update(
        train_epoch(
            model,
            train_batches,
            optimizer,
            recipe,
            epoch=epoch,
            labels=labels,
            multilabel=multilabel,
            rng=rng,
            device=device,
        )
    )
    # With ``ema_decay``, the average is what is validated and kept as the best model.
    with ema_weights(optimizer):
        metrics.update(
            evaluate_batches(
                model,
                val_batches,
                labels=labels,
                multilabel=multilabel,
                recipe=recipe,
                device=device,
            )
        )
        best.update(epoch, metrics, model)
    metrics["best_val_macro_f1"] = best.val_macro_f1
    metrics["best_val_score"] = best.score
    metrics["best_epoch"] = best.epoch
    metrics["converged"] = float(best.should_stop(epoch))
    return metrics


@dataclass
class FitResult:
    """What :func:`fit` returns: the best epoch's weights and metrics, and every epoch's."""

    best: BestTracker
    history: list[dict[str, float]]

    @property
    def best_metrics(self) -> dict[str, float]:
        return next((m for m in self.history if m["epoch"] == self.best.epoch), {})


def fit(
    model: torch.nn.Module,
    train: pa.Table,
    val: pa.Table | None,
    recipe: Recipe,
    *,
    labels: list[str],
    multilabel: bool = False,
    device: torch.device | str = "cpu",
    start_epoch: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    best: BestTracker | None = None,
    on_epoch: Callable[[dict[str, float], BestTracker, torch.optim.Optimizer], None] | None = None,
) -> FitResult:
    """Train ``model`` in this process on in-memory tables (Tune trials, benchmarks).

    ``on_epoch(metrics, best, optimizer)`` runs after every epoch (a Tune trial reports
    and checkpoints there). ``start_epoch``, ``optimizer`` and ``best`` resume a run.
    """
    torch.manual_seed(recipe.seed + start_epoch)
    rng = np.random.default_rng(recipe.seed + 7919 * start_epoch)
    model.to(device)
    optimizer = optimizer or make_optimizer(model, recipe)
    best = best or BestTracker(recipe.patience)
    history: list[dict[str, float]] = []
    for epoch in range(start_epoch, recipe.epochs):
        metrics = run_epoch(
            model,
            table_batches(train, recipe.batch_size, seed=recipe.seed + epoch),
            table_batches(val, recipe.batch_size) if val is not None else (),
            optimizer,
            recipe,
            best,
            epoch=epoch,
            labels=labels,
            multilabel=multilabel,
            rng=rng,
            device=device,
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, best, optimizer)
        if best.should_stop(epoch):
            break
    return FitResult(best, history)


def read_split_tables(
    features_dir, splits: Iterable[str] = ("train", "val")
) -> dict[str, pa.Table]:
    """The feature table's rows of each split, in memory (the columns a batch needs)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = [pq.read_table(p, columns=COLUMNS) for p in ft.part_files(features_dir)]
    table = pa.concat_tables(parts, promote_options="default")
    return {s: table.filter(pc.equal(table["split"], s)) for s in splits}
