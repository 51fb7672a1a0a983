"""avarnet.predictor: the model artifact contract (model.json + model.pt) that batch
inference, evaluation and Serve share."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from avarnet.models import create_model
from avarnet.predictor import (
    ARTIFACT_FORMAT,
    Prediction,
    Predictor,
    find_normal_label,
    read_meta,
    save_artifact,
    seeded_artifact,
)

LABELS = ["Normal", "Fight", "Explosion"]


@pytest.fixture
def model(tiny_spec):
    torch.manual_seed(1)
    return create_model(
        "avarnet_tiny",
        audio_dim=tiny_spec.audio_dim,
        visual_dim=tiny_spec.visual_dim,
        num_classes=len(LABELS),
        normal_index=0,
    ).eval()


@pytest.fixture
def artifact(tmp_path, model, tiny_spec):
    return save_artifact(
        tmp_path / "model",
        model_name="avarnet_tiny",
        model_kwargs=model.config["kwargs"],
        state_dict=model.state_dict(),
        labels=LABELS,
        feature_spec=tiny_spec,
        metrics={"val_macro_f1": np.float32(0.5), "test_accuracy": 0.75},
        config={"train": {"epochs": 3}},
    )


def _clips(spec, lengths=(5, 3, 7), seed=0):
    rng = np.random.default_rng(seed)
    audio = [rng.standard_normal((t, spec.audio_dim)).astype(np.float32) for t in lengths]
    visual = [rng.standard_normal((t, spec.visual_dim)).astype(np.float32) for t in lengths]
    return audio, visual, [True, False, True][: len(lengths)]


def test_model_json_holds_every_field_of_the_format(artifact, model, tiny_spec):
    assert sorted(p.name for p in artifact.iterdir()) == ["model.json", "model.pt"]
    meta = json.loads((artifact / "model.json").read_text())
    assert meta == read_meta(artifact)
    assert meta["format"] == ARTIFACT_FORMAT == "avarnet-model/1"
    assert meta["model_name"] == "avarnet_tiny"
    assert meta["model_kwargs"] == model.config["kwargs"]
    assert meta["labels"] == LABELS and meta["normal_label"] == "Normal"
    assert meta["multilabel"] is False
    assert meta["feature_spec"] == tiny_spec.to_dict()
    assert meta["metrics"] == {"val_macro_f1": 0.5, "test_accuracy": 0.75}  # numpy -> float
    assert meta["config"] == {"train": {"epochs": 3}}


def test_round_trip_restores_weights_labels_and_spec(artifact, model, tiny_spec):
    p = Predictor.from_dir(artifact)
    assert p.labels == LABELS and p.spec == tiny_spec and p.multilabel is False
    assert not p.model.training
    loaded, saved = p.model.state_dict(), model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert p.describe() == {
        "model_name": "avarnet_tiny",
        "labels": LABELS,
        "multilabel": False,
        "feature_spec": tiny_spec.to_dict(),
        "metrics": {"val_macro_f1": 0.5, "test_accuracy": 0.75},
    }


def test_predictions_are_deterministic_and_do_not_depend_on_batching(artifact, tiny_spec):
    audio, visual, has_audio = _clips(tiny_spec)
    first = Predictor.from_dir(artifact).predict(audio, visual, has_audio)
    again = Predictor.from_dir(artifact).predict(audio, visual, has_audio)
    one_by_one = Predictor.from_dir(artifact).predict(audio, visual, has_audio, batch_size=1)
    assert len(first) == 3 and all(isinstance(x, Prediction) for x in first)
    for a, b, c, t in zip(first, again, one_by_one, (5, 3, 7)):
        assert a.label == b.label == c.label
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
        np.testing.assert_allclose(a.probabilities, c.probabilities, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.segment_scores, c.segment_scores, rtol=1e-5, atol=1e-6)
        assert a.probabilities.shape == (3,) and a.probabilities.sum() == pytest.approx(1, abs=1e-5)
        assert a.label == LABELS[int(a.probabilities.argmax())]
        assert a.segment_scores.shape == (t,) and a.segment_top_class.shape == (t,)
        assert ((a.segment_scores >= 0) & (a.segment_scores <= 1)).all()


def test_saving_again_replaces_the_folder_atomically(artifact, model, tiny_spec):
    (artifact / "stale.txt").write_text("from an older save")
    save_artifact(
        artifact,
        model_name="avarnet_tiny",
        model_kwargs=model.config["kwargs"],
        state_dict=model.state_dict(),
        labels=LABELS,
        feature_spec=tiny_spec,
    )
    assert sorted(p.name for p in artifact.iterdir()) == ["model.json", "model.pt"]
    assert [p.name for p in artifact.parent.iterdir()] == ["model"]  # no temporary left
    assert read_meta(artifact)["metrics"] == {} and read_meta(artifact)["config"] == {}


def test_seeded_artifact_is_reproducible(tmp_path, tiny_spec):
    audio, visual, has_audio = _clips(tiny_spec, lengths=(4,))
    a = seeded_artifact(tmp_path / "a", "avarnet_tiny", tiny_spec, ["normal", "riot"], seed=3)
    b = seeded_artifact(tmp_path / "b", "avarnet_tiny", tiny_spec, ["normal", "riot"], seed=3)
    pa_, pb = Predictor.from_dir(a), Predictor.from_dir(b)
    assert read_meta(a)["normal_label"] == "normal"
    assert pa_.model.normal_index == 0
    np.testing.assert_array_equal(
        pa_.predict(audio, visual, has_audio)[0].probabilities,
        pb.predict(audio, visual, has_audio)[0].probabilities,
    )


def test_find_normal_label():
    assert find_normal_label(["Abuse", "Normal"]) == "Normal"
    assert find_normal_label(["A", "B1", "G"]) == "A"  # XD-Violence's code
    assert find_normal_label(["Abuse", "Crash"]) is None


def test_load_resolves_registry_uris_through_the_resolver(artifact):
    seen = []

    def resolver(uri):
        seen.append(uri)
        return artifact

    assert Predictor.load("models:/avarnet@champion", resolver=resolver).labels == LABELS
    assert Predictor.load(str(artifact)).labels == LABELS  # a folder needs none
    assert seen == ["models:/avarnet@champion"]
    with pytest.raises(ValueError, match="needs a resolver"):
        Predictor.load("runs:/abc/model")


# -- a broken or tampered artifact is refused ------------------------------------------


def test_a_folder_without_model_json_is_not_an_artifact(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a model artifact \(no model.json\)"):
        Predictor.from_dir(tmp_path)


def test_an_unknown_format_is_refused(artifact):
    meta = json.loads((artifact / "model.json").read_text())
    (artifact / "model.json").write_text(json.dumps({**meta, "format": "avarnet-model/0"}))
    with pytest.raises(ValueError, match="unknown artifact format 'avarnet-model/0'"):
        read_meta(artifact)


def test_missing_weights_are_refused(artifact):
    (artifact / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model.pt"):
        Predictor.from_dir(artifact)


def test_weights_that_do_not_fit_the_model_are_refused(artifact):
    state = torch.load(artifact / "model.pt", weights_only=True)
    missing = sorted(state)[0]
    del state[missing]
    torch.save(state, artifact / "model.pt")
    with pytest.raises(RuntimeError, match=f"Missing key.*{missing}"):
        Predictor.from_dir(artifact)


def test_labels_that_disagree_with_the_weights_are_refused(artifact):
    meta = json.loads((artifact / "model.json").read_text())
    meta["model_kwargs"]["num_classes"] = 2
    (artifact / "model.json").write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="size mismatch"):
        Predictor.from_dir(artifact)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_holding_arbitrary_objects_are_never_unpickled(artifact, capsys):
    torch.save({"x": _Payload()}, artifact / "model.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        Predictor.from_dir(artifact)
    assert "this must never run" not in capsys.readouterr().out


def test_an_artifact_from_before_fusion_norms_loads_with_layernorm(tmp_path, tiny_spec):
    """Artifacts written before the fusion norm was a setting recorded no ``fusion_norm``;
    every model then used LayerNorm, so that is what they load with (the preset's newer
    default would not fit their weights)."""
    old = create_model(
        "avarnet_tiny",
        audio_dim=tiny_spec.audio_dim,
        visual_dim=tiny_spec.visual_dim,
        num_classes=len(LABELS),
        fusion_norm="layer",
    )
    kwargs = {k: v for k, v in old.config["kwargs"].items() if k != "fusion_norm"}
    path = save_artifact(
        tmp_path / "old",
        model_name="avarnet_tiny",
        model_kwargs=kwargs,
        state_dict=old.state_dict(),
        labels=LABELS,
        feature_spec=tiny_spec,
    )
    loaded = Predictor.from_dir(path)
    assert loaded.model.config["kwargs"]["fusion_norm"] == "layer"
