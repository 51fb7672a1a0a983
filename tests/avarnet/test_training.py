"""The framework-free training step (avarnet.training): schedule, collation, best-epoch
selection, early stopping, and a plain fit that learns a separable table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avarnet import training as T
from avarnet.features import table as ft
from avarnet.features.backbones import build_feature_spec
from avarnet.models import create_model

LABELS = ["a", "b", "c"]
# What the mechanism tests below were written against: no weight average, light decay
# (the project's defaults, which Recipe() takes from TrainConfig, are the small-data recipe).
PLAIN = {"ema_decay": None, "weight_decay": 1e-4}


def _table(n_per_class: int, seed: int, *, split: str = "train", t: int = 6):
    """Clips whose class shows in one audio dimension (class k: dimension k is high)."""
    spec = build_feature_spec("tiny")
    rng = np.random.default_rng(seed)
    rows = []
    for k, name in enumerate(LABELS):
        for i in range(n_per_class):
            audio = rng.normal(0, 0.3, (t, spec.audio_dim)).astype(np.float32)
            audio[:, k] += 2.0
            visual = rng.normal(0, 0.3, (t, spec.visual_dim)).astype(np.float32)
            rows.append(
                {
                    "video_id": f"{name}{i}",
                    "path": f"/x/{name}{i}.mp4",
                    "label": name,
                    "split": split,
                    "audio": audio,
                    "visual": visual,
                    "segment_gt": np.zeros(t, np.int8),
                    "duration_s": float(t),
                    "has_audio": True,
                }
            )
    return ft.clips_to_table(rows, spec), spec


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    r = T.Recipe(epochs=10, lr=1.0, warmup_epochs=2, schedule="cosine", min_lr_ratio=0.1)
    lrs = [T.lr_at(e, r) for e in range(10)]
    assert lrs[0] == pytest.approx(1 / 3) and lrs[1] == pytest.approx(2 / 3)
    assert lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # monotone decay after warm-up
    assert lrs[-1] == pytest.approx(0.1)
    assert T.lr_at(7, T.Recipe(lr=0.5, warmup_epochs=0, schedule="constant")) == 0.5  # constant


@pytest.mark.parametrize("world", [2, 3])
def test_workers_shares_of_an_epoch_make_one_process_global_batches(world):
    """Every worker takes its rows of the same shuffle: step k of all the workers together
    sees the rows of one process's step k with the global batch, and every worker runs
    the same number of steps (a short epoch is wrapped round, nothing is left out)."""
    table, _ = _table(4, 0)
    table = table.slice(0, 11)  # 2 or 3 workers: one row wrapped round, 6 or 4 rows each
    ids = table.column("video_id").to_pylist()
    assert len(set(ids)) == 11

    def steps(rank: int) -> list[list[str]]:
        got = T.table_batches(table, 2, seed=5, rank=rank, world_size=world)
        return [b.column("video_id").to_pylist() for b in got]

    one = [b.column("video_id").to_pylist() for b in T.table_batches(table, 2 * world, seed=5)]
    shares = [steps(r) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # the same number of steps on every worker
    together = [sorted(sum((s[k] for s in shares), [])) for k in range(len(shares[0]))]
    n_full = 11 // (2 * world)
    assert together[:n_full] == [sorted(b) for b in one[:n_full]]
    seen = sum(together, [])
    assert set(seen) == set(ids)  # every row, each once, but for the wrapped-round ones
    assert len(seen) == 12
    assert steps(0) == steps(0)  # the same seed, the same epoch
    with pytest.raises(ValueError, match="rank 3 is not in a world of 3"):
        next(T.table_batches(table, 2, rank=3, world_size=3))


def test_collate_gives_class_indices_or_multi_hot_targets():
    table, _ = _table(2, 0)
    batch, targets = T.collate(table, LABELS, multilabel=False)
    assert targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.audio.shape[:2] == (6, 6) and bool(batch.mask.all())
    _, multi = T.collate(table, LABELS, multilabel=True)
    assert multi.shape == (6, 3) and multi.sum(1).tolist() == [1.0] * 6
    cut, _ = T.collate(table, LABELS, False, max_len=4, rng=np.random.default_rng(0))
    assert cut.audio.shape[1] == 4


def test_best_tracker_breaks_ties_by_loss_and_stops_after_patience():
    model = torch.nn.Linear(2, 2)
    best = T.BestTracker(patience=2)
    assert best.update(0, {"val_score": T.val_score(0.9, 0.5), "val_macro_f1": 0.9}, model)
    # Same macro-F1, lower loss: better. Same macro-F1, higher loss: not.
    assert best.update(1, {"val_score": T.val_score(0.9, 0.3), "val_macro_f1": 0.9}, model)
    assert not best.update(2, {"val_score": T.val_score(0.9, 0.4), "val_macro_f1": 0.9}, model)
    assert not best.should_stop(2)
    assert best.should_stop(3) and best.epoch == 1
    again = T.BestTracker.from_dict(best.to_dict(), patience=2)
    assert again.epoch == 1 and again.score == pytest.approx(best.score)
    # A checkpoint written before scores were recorded carries the macro-F1 only.
    old = T.BestTracker.from_dict({"val_macro_f1": 0.5, "epoch": 3}, None)
    assert old.score == 0.5 and not math.isinf(old.score)


def test_fit_learns_a_separable_table_and_keeps_the_best_epoch():
    train, spec = _table(6, 0)
    val, _ = _table(3, 1, split="val")
    torch.manual_seed(0)
    # LayerNorm only: this test is about fit, not the norm (with the preset's layer+batch,
    # 18 clips in batches of 6 reach 0.89, not 1.0, validation accuracy in 25 epochs).
    model = create_model(
        "avarnet_tiny",
        audio_dim=spec.audio_dim,
        visual_dim=spec.visual_dim,
        num_classes=3,
        fusion_norm="layer",
    )
    recipe = T.Recipe(epochs=25, batch_size=6, lr=3e-3, warmup_epochs=2, schedule="cosine", **PLAIN)
    seen = []
    result = T.fit(
        model,
        train,
        val,
        recipe,
        labels=LABELS,
        on_epoch=lambda m, best, opt: seen.append((m["epoch"], opt.param_groups[0]["lr"])),
    )
    assert [e for e, _ in seen] == list(range(25))
    assert seen[0][1] == pytest.approx(recipe.lr / 3)  # the schedule reached the optimiser
    assert result.best_metrics["val_accuracy"] == 1.0
    assert result.best.state is not None
    model.load_state_dict(result.best.state)
    report = T.evaluate_batches(
        model, T.table_batches(val, 4), labels=LABELS, multilabel=False, recipe=recipe
    )
    assert report["val_accuracy"] == 1.0


def test_fit_stops_early_once_validation_stops_improving():
    train, spec = _table(4, 0)
    val, _ = _table(2, 1, split="val")
    model = create_model(
        "avarnet_tiny", audio_dim=spec.audio_dim, visual_dim=spec.visual_dim, num_classes=3
    )
    recipe = T.Recipe(
        epochs=200,
        batch_size=12,
        lr=3e-3,
        patience=3,
        warmup_epochs=0,
        schedule="constant",
        **PLAIN,
    )
    result = T.fit(model, train, val, recipe, labels=LABELS)
    last = result.history[-1]["epoch"]
    assert last < 199 and last - result.best.epoch == 3


def test_ema_is_validated_kept_as_the_best_and_saved_with_the_optimiser():
    train, spec = _table(4, 0)
    val, _ = _table(2, 1, split="val")
    torch.manual_seed(0)
    model = create_model(
        "avarnet_tiny", audio_dim=spec.audio_dim, visual_dim=spec.visual_dim, num_classes=3
    )
    recipe = T.Recipe(epochs=3, batch_size=4, lr=3e-3, ema_decay=0.9)
    optim = T.make_optimizer(model, recipe)
    best = T.BestTracker()
    T.run_epoch(
        model,
        T.table_batches(train, 4, seed=0),
        T.table_batches(val, 4),
        optim,
        recipe,
        best,
        epoch=0,
        labels=LABELS,
        multilabel=False,
        rng=np.random.default_rng(0),
    )
    params = dict(model.named_parameters())
    with T.ema_weights(optim):
        ema = {n: p.detach().clone() for n, p in params.items()}
    # 12 clips in batches of 4: three steps, the first copies the weights.
    first = next(iter(params))
    raw = optim.state[params[first]]
    assert float(raw["ema_updates"]) == 2.0 and torch.equal(ema[first], raw["ema"])
    # The best model is the average; the model itself keeps its training weights.
    assert all(torch.equal(best.state[n], ema[n]) for n in params)
    assert any(not torch.equal(params[n].detach(), ema[n]) for n in params)
    # The average travels with the optimiser's state (a checkpoint's optim.pt).
    again = T.make_optimizer(model, recipe)
    again.load_state_dict(optim.state_dict())
    with T.ema_weights(again):
        assert all(torch.equal(p.detach(), ema[n]) for n, p in model.named_parameters())
    assert any(not torch.equal(params[n].detach(), ema[n]) for n in params)
    # Without ema_decay nothing is averaged and validation sees the training weights.
    plain = T.make_optimizer(model, T.Recipe(ema_decay=None))
    with T.ema_weights(plain):
        pass
    assert not any("ema" in s for s in plain.state.values())


def test_augment_adds_noise_on_valid_steps_and_mixes_clips_and_their_losses():
    table, spec = _table(2, 0)
    batch, targets = T.collate(table, LABELS, multilabel=False)
    batch.mask[0, -2:] = False
    rng = np.random.default_rng(0)
    same, mix = T.augment(batch, T.Recipe(), rng)
    assert mix is None and torch.equal(same.audio, batch.audio)
    noisy, mix = T.augment(batch, T.Recipe(feature_noise=0.5), rng)
    assert mix is None and not torch.equal(noisy.visual, batch.visual)
    assert torch.equal(noisy.audio[0, -2:], batch.audio[0, -2:])  # padding stays as it was
    mixed, (lam, perm) = T.augment(batch, T.Recipe(mixup=0.4), rng)
    want = lam * batch.audio + (1 - lam) * batch.audio[perm]
    assert torch.allclose(mixed.audio, want)
    assert torch.equal(mixed.mask, batch.mask | batch.mask[perm])
    model = create_model(
        "avarnet_tiny", audio_dim=spec.audio_dim, visual_dim=spec.visual_dim, num_classes=3
    ).eval()
    recipe = T.Recipe()
    _, loss = T._loss(model, mixed, targets, recipe, False, (lam, perm))
    _, a = T._loss(model, mixed, targets, recipe, False)
    _, b = T._loss(model, mixed, targets[perm], recipe, False)
    assert float(loss) == pytest.approx(lam * float(a) + (1 - lam) * float(b), rel=1e-5)


def test_train_config_carries_the_ema_and_augmentation_keys_into_the_recipe():
    from avarnet.config import ConfigError, load_config

    recipe = T.Recipe.from_config(load_config(None, []).train)
    assert recipe.ema_decay == 0.99 and recipe.mixup == 0.0 and recipe.feature_noise == 0.0
    off = T.Recipe.from_config(load_config(None, ["train.ema_decay=null"]).train)
    assert off.ema_decay is None
    for bad in ("train.ema_decay=1.0", "train.mixup=-1"):
        with pytest.raises(ConfigError):
            load_config(None, [bad])


def test_the_recipe_defaults_are_the_train_config_defaults():
    from avarnet.config import TrainConfig

    assert T.Recipe() == T.Recipe.from_config(TrainConfig())
