"""FeatureSpec: serialisation, comparison, decode options; preset resolution."""

from __future__ import annotations

import dataclasses

import pytest

from avarnet.data.decode import DecodeOptions
from avarnet.features.backbones import PRESETS, build_feature_spec
from avarnet.features.spec import DEFAULT_CHUNK_SEGMENTS, FeatureSpec, FeatureSpecMismatch


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return build_feature_spec("tiny")


def test_round_trips(spec, tmp_path):
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert FeatureSpec.from_json(spec.to_json()) == spec
    assert FeatureSpec.load(spec.save(tmp_path / "sub" / "spec.json")) == spec
    assert isinstance(spec.to_dict()["mean"], list)
    assert isinstance(FeatureSpec.from_json(spec.to_json()).mean, tuple)


def test_unknown_and_missing_keys_are_rejected(spec):
    with pytest.raises(ValueError, match="unknown FeatureSpec field.*colour"):
        FeatureSpec.from_dict({**spec.to_dict(), "colour": "red"})
    data = spec.to_dict()
    del data["audio_dim"]
    with pytest.raises(ValueError, match="missing.*audio_dim"):
        FeatureSpec.from_dict(data)
    with pytest.raises(ValueError, match="pooling"):
        dataclasses.replace(spec, pooling="max")
    with pytest.raises(ValueError, match="image_size"):
        dataclasses.replace(spec, image_size=0)


def test_mismatch_lists_every_differing_field(spec):
    other = dataclasses.replace(spec, image_size=96, audio_dim=768, preset="custom")
    assert spec.diff(other) == {
        "preset": ("tiny", "custom"),
        "image_size": (64, 96),
        "audio_dim": (64, 768),
    }
    with pytest.raises(FeatureSpecMismatch) as info:
        spec.check_compatible(other)
    err = info.value
    assert isinstance(err, ValueError)
    assert set(err.differences) == {"image_size", "audio_dim"}  # the preset is only a label
    assert "image_size: 64 != 96" in str(err) and "audio_dim: 64 != 768" in str(err)
    spec.check_compatible(dataclasses.replace(spec, preset="renamed"))


def test_local_weights_compare_by_digest_not_path(spec):
    a = dataclasses.replace(spec, audio_backbone="/a/w2v", audio_revision="sha256:ab")
    a.check_compatible(dataclasses.replace(a, audio_backbone="/elsewhere/w2v"))
    with pytest.raises(FeatureSpecMismatch, match="audio_revision"):
        a.check_compatible(dataclasses.replace(a, audio_revision="sha256:cd"))
    hub = dataclasses.replace(spec, audio_backbone="org/a", audio_revision="main")
    with pytest.raises(FeatureSpecMismatch, match="audio_backbone"):
        hub.check_compatible(dataclasses.replace(hub, audio_backbone="org/b"))


def test_decode_options(spec):
    assert spec.chunk_segments == DEFAULT_CHUNK_SEGMENTS
    opts = dataclasses.replace(spec, chunk_segments=8).decode_options()
    assert opts == DecodeOptions(
        segment_seconds=1.0,
        segment_frames=None,
        frames_per_segment=4,
        image_size=64,
        sample_rate=16000,
        chunk_segments=8,
    )
    xd = build_feature_spec("tiny", segment_frames=16)
    assert xd.decode_options().segment_frames == 16


def test_presets_read_preprocessing_from_the_backbone_configs():
    paper = build_feature_spec("paper")  # no network: the hub id's config is known
    assert (paper.audio_dim, paper.visual_dim, paper.image_size) == (768, 640, 256)
    assert paper.visual_revision == "timm/mobilevit_s.cvnets_in1k"
    full = build_feature_spec("full-random")
    assert full.diff(paper).keys() == {
        "preset",
        "audio_backbone",
        "audio_revision",
        "visual_weights",
        "visual_revision",
    }
    tiny = build_feature_spec("tiny", visual_weights="random")
    assert tiny.visual_weights == "random:seed=0"
    assert set(PRESETS) == {"paper", "full-random", "tiny"}


def test_build_feature_spec_rejects_bad_names():
    with pytest.raises(ValueError, match="known:.*full-random"):
        build_feature_spec("huge")
    with pytest.raises(ValueError, match="mean \\(read from the backbone's config\\)"):
        build_feature_spec("tiny", mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="colour \\(unknown\\)"):
        build_feature_spec("tiny", colour=1)


def test_chunk_segments_is_part_of_the_spec(spec):
    # Wav2Vec2 sees one chunk's audio at a time: the chunk length changes the features.
    short = build_feature_spec("tiny", chunk_segments=16)
    assert short.diff(spec) == {"chunk_segments": (16, DEFAULT_CHUNK_SEGMENTS)}
    with pytest.raises(FeatureSpecMismatch, match="chunk_segments: 16 != 32") as info:
        short.check_compatible(spec)
    assert set(info.value.differences) == {"chunk_segments"}
    with pytest.raises(ValueError, match="chunk_segments"):
        dataclasses.replace(spec, chunk_segments=0)


def test_specs_written_before_chunk_segments_read_as_the_default(spec):
    # Feature tables and models saved before the field existed used the default.
    old = spec.to_dict()
    del old["chunk_segments"]
    assert FeatureSpec.from_dict(old) == spec
    assert FeatureSpec.from_dict(old).chunk_segments == DEFAULT_CHUNK_SEGMENTS
