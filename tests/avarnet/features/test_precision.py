"""FeatureSpec.precision: the spec field, and the encoders under autocast (tiny preset, CPU).

bf16 features against fp32 ones on the same chunks, measured here (tiny preset, 2 chunks of
2 one-second segments, this project's 2-core CPU, torch 2.14): per-segment cosine >= 0.99992
(visual) and >= 0.99997 (audio), max abs difference 0.011 on features up to 1.4. The
full-size backbones (``full-random``, 2 segments) gave >= 0.99992 and 0.024. The bound
below, 0.999, leaves ten times that margin.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from avarnet.config import PRECISIONS as CONFIG_PRECISIONS
from avarnet.data.decode import ClipChunk
from avarnet.features import backbones
from avarnet.features import table as ft
from avarnet.features.backbones import Autocast, build_encoders, build_feature_spec
from avarnet.features.extractor import FeatureEncoders
from avarnet.features.spec import PRECISIONS, FeatureSpec, FeatureSpecMismatch

COSINE_BOUND = 0.999


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return build_feature_spec("tiny")


@pytest.fixture(scope="module")
def chunks(spec) -> list[ClipChunk]:
    rng = np.random.default_rng(0)
    k, s, n = spec.frames_per_segment, spec.image_size, 2
    return [
        ClipChunk(
            info=None,
            chunk_index=0,
            n_chunks=1,
            segment_start=0,
            n_segments_total=n,
            bounds_s=np.arange(n + 1, dtype=np.float64),
            frames=rng.integers(0, 255, (n, k, s, s, 3), dtype=np.uint8),
            audio=(0.1 * rng.standard_normal(n * spec.sample_rate)).astype(np.float32),
            has_audio=True,
        )
        for _ in range(2)
    ]


@pytest.fixture(scope="module")
def fp32_encoders(spec) -> FeatureEncoders:
    return build_encoders(spec)


@pytest.fixture(scope="module")
def fp32_features(fp32_encoders, chunks):
    return fp32_encoders.encode_chunks(chunks)


def test_precision_defaults_to_fp32_and_round_trips(spec):
    assert spec.precision == "fp32"
    assert PRECISIONS == CONFIG_PRECISIONS  # what the config accepts, the spec accepts
    half = build_feature_spec("tiny", precision="bf16")
    assert half.precision == "bf16"
    assert FeatureSpec.from_json(half.to_json()) == half
    assert FeatureSpec.from_dict(half.to_dict()).precision == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        build_feature_spec("tiny", precision="fp8")


def test_specs_written_before_precision_read_as_fp32(spec, tmp_path):
    old = spec.to_dict()
    del old["precision"]
    assert FeatureSpec.from_dict(old) == spec
    (tmp_path / ft.SPEC_FILE).write_text(json.dumps(old))  # a table written before
    assert "precision" not in (tmp_path / ft.SPEC_FILE).read_text()
    assert ft.read_spec(tmp_path).precision == "fp32"


def test_a_table_of_another_precision_is_refused(spec, tmp_path):
    ft.save_spec(spec, tmp_path)
    with pytest.raises(FeatureSpecMismatch, match="precision: 'fp32' != 'bf16'") as info:
        ft.read_spec(tmp_path).check_compatible(dataclasses.replace(spec, precision="bf16"))
    assert set(info.value.differences) == {"precision"}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _half_encoders(precision: str, spec: FeatureSpec, fp32: FeatureEncoders) -> FeatureEncoders:
    """bf16 through build_encoders; fp16 the same fp32 backbones wrapped as build_encoders
    wraps them (saves building the backbones a third time)."""
    half = dataclasses.replace(spec, precision=precision)
    if precision == "bf16":
        return build_encoders(half)
    dtype = backbones.AUTOCAST_DTYPES[precision]
    audio, visual = Autocast(fp32.audio_model, dtype), Autocast(fp32.visual_model, dtype)
    return FeatureEncoders(half, audio, visual)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_features_are_close_to_fp32_ones(
    spec, chunks, fp32_encoders, fp32_features, precision
):
    if not backbones._cpu_autocast_supports(backbones.AUTOCAST_DTYPES[precision]):
        pytest.skip(f"this torch's CPU autocast has no {precision}")
    enc = _half_encoders(precision, spec, fp32_encoders)
    assert isinstance(enc.audio_model, Autocast) and isinstance(enc.visual_model, Autocast)
    assert enc.audio_model.config.hidden_size == spec.audio_dim
    assert next(enc.visual_model.parameters()).dtype == torch.float32  # weights stay fp32
    half = enc.encode_chunks(chunks)
    for modality, name in ((0, "audio"), (1, "visual")):
        a = np.concatenate([f[modality] for f in fp32_features])
        b = np.concatenate([f[modality] for f in half])
        assert b.dtype == np.float32 and b.shape == a.shape
        assert np.isfinite(b).all()
        cos, diff = _cosine(a, b), float(np.abs(a - b).max())
        print(f"{precision} vs fp32, {name}: cosine min {cos.min():.5f}, max abs diff {diff:.4g}")
        assert not np.array_equal(a, b)  # the backbones did run in half precision
        assert cos.min() >= COSINE_BOUND
        assert np.isfinite(diff) and diff < 0.1 * np.abs(a).max()


def test_an_unsupported_precision_fails_naming_the_setting(spec, monkeypatch):
    # A dtype this torch's CPU autocast refuses stands in for fp16 on a torch without it.
    monkeypatch.setitem(backbones.AUTOCAST_DTYPES, "fp16", torch.float64)
    with pytest.raises(
        ValueError, match=r"features\.precision=fp16 .*use features\.precision=fp32 or bf16"
    ):
        build_encoders(dataclasses.replace(spec, precision="fp16"))
    assert backbones.autocast_dtype("fp32", "cpu") is None  # fp32 never autocasts
