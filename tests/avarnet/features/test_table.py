"""avarnet.features.table: the Parquet feature table (one row per clip, FeatureSpec in
the metadata and beside the parts, failed clips in errors.parquet)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avarnet.features import table as ft
from avarnet.features.spec import FeatureSpec


@pytest.fixture
def spec() -> FeatureSpec:
    """The tiny preset's spec with 3-d audio and 2-d visual features (built by hand: the
    table needs no backbone)."""
    return FeatureSpec(
        preset="tiny",
        audio_backbone="random:wav2vec2_tiny",
        audio_revision="seed=0",
        visual_backbone="mobilevit_xxs",
        visual_weights="random:seed=0",
        visual_revision=None,
        sample_rate=16000,
        audio_normalize=True,
        image_size=64,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        interpolation="bicubic",
        frames_per_segment=4,
        segment_seconds=1.0,
        segment_frames=None,
        audio_dim=3,
        visual_dim=2,
    )


def _row(video_id, t, *, label="Fight", split="train", seed=0, **extra):
    rng = np.random.default_rng(seed)
    gt = np.zeros(t, np.int8)
    gt[: t // 2] = 1
    return {
        "video_id": video_id,
        "path": f"/data/{video_id}.mp4",
        "label": label,
        "split": split,
        "audio": rng.standard_normal((t, 3)).astype(np.float32),
        "visual": rng.standard_normal((t, 2)).astype(np.float32),
        "segment_gt": gt,
        "duration_s": float(t),
        "has_audio": t % 2 == 0,
        **extra,
    }


def test_table_schema_carries_the_spec(spec):
    schema = ft.table_schema(spec)
    assert schema.field("audio").type == pa.list_(pa.list_(pa.float32(), 3))
    assert schema.field("visual").type == pa.list_(pa.list_(pa.float32(), 2))
    assert json.loads(schema.metadata[ft.SPEC_KEY]) == spec.to_dict()


def test_clips_to_table_fills_defaults(spec):
    table = ft.clips_to_table([_row("a", 4)], spec)
    row = table.to_pylist()[0]
    assert row["labels"] == ["Fight"]  # from label when absent
    assert row["gt_intervals"] == [] and row["gt_available"] is False
    assert row["n_segments"] == 4 and row["decoder"] == ""
    assert row["segment_gt"] == [1, 1, 0, 0]


def test_write_and_read_round_trip(tmp_path, spec):
    rows = [
        _row(
            "b",
            3,
            seed=1,
            labels=["B1", "B2"],
            gt_intervals=[[0, 16], [32, 40]],
            gt_available=True,
            decoder="pyav",
        ),
        _row("a", 5, label="Normal", split="test", seed=2),
        _row("c", 1, seed=3, split="val"),
    ]
    p1 = ft.write_part(rows[:2], tmp_path, spec)
    p2 = ft.write_part(rows[2:], tmp_path, spec)
    ft.save_spec(spec, tmp_path)
    assert ft.part_files(tmp_path) == sorted([p1, p2])
    assert all(p.name.startswith("part-") and p.suffix == ".parquet" for p in (p1, p2))
    assert not list(tmp_path.glob(".*tmp"))  # written aside, then renamed

    fs = ft.read_features(tmp_path)
    assert fs.spec == spec and len(fs) == 3
    assert fs.video_id == ["a", "b", "c"]  # sorted, whatever the part order
    by_id = {r["video_id"]: r for r in rows}
    for i, vid in enumerate(fs.video_id):
        np.testing.assert_array_equal(fs.audio[i], by_id[vid]["audio"])
        np.testing.assert_array_equal(fs.visual[i], by_id[vid]["visual"])
        np.testing.assert_array_equal(fs.segment_gt[i], by_id[vid]["segment_gt"])
        assert fs.audio[i].dtype == np.float32 and fs.segment_gt[i].dtype == np.int8
        assert fs.has_audio[i] == by_id[vid]["has_audio"]
        assert fs.duration_s[i] == by_id[vid]["duration_s"]
    assert fs.label == ["Normal", "Fight", "Fight"]
    assert fs.labels[1] == ["B1", "B2"]
    assert fs.split == ["test", "train", "val"]
    assert fs.gt_intervals[1] == [[0, 16], [32, 40]]
    assert fs.gt_available.tolist() == [False, True, False]

    test_only = ft.read_features(tmp_path, splits=["test", "val"])
    assert test_only.video_id == ["a", "c"]
    picked = fs.select(fs.split == np.array("train"))
    assert picked.video_id == ["b"] and picked.spec == spec
    np.testing.assert_array_equal(picked.visual[0], by_id["b"]["visual"])


def test_spec_is_read_from_the_json_or_from_a_part(tmp_path, spec):
    part = ft.write_part([_row("a", 2)], tmp_path, spec)
    assert ft.read_spec(tmp_path) == spec  # no feature_spec.json: from the part's metadata
    assert ft.read_spec(part) == spec
    ft.save_spec(spec, tmp_path)
    assert json.loads((tmp_path / ft.SPEC_FILE).read_text()) == spec.to_dict()
    assert ft.read_spec(tmp_path) == spec
    assert ft.read_features(part).video_id == ["a"]  # one Parquet file reads too


def test_not_a_feature_table_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a feature table"):
        ft.read_spec(tmp_path)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1]}), plain)
    with pytest.raises(ValueError, match="without avarnet.feature_spec metadata"):
        ft.read_spec(plain)


def test_a_spec_without_parts_is_refused(tmp_path, spec):
    ft.save_spec(spec, tmp_path)
    with pytest.raises(FileNotFoundError, match="no part files"):
        ft.read_features(tmp_path)


def test_done_video_ids(tmp_path, spec):
    assert ft.done_video_ids(tmp_path) == set()
    ft.write_part([_row("a", 2), _row("b", 2)], tmp_path, spec)
    ft.write_part([_row("c", 2)], tmp_path, spec)
    assert ft.done_video_ids(tmp_path) == {"a", "b", "c"}


def test_errors_round_trip(tmp_path):
    assert ft.read_errors(tmp_path) == []
    clip = tmp_path / "bad.mp4"
    clip.write_bytes(b"not a video")
    errors = [
        {
            "video_id": "x",
            "path": str(clip),
            "stage": "decode",
            "message": "no video stream",
            "fingerprint": ft.file_fingerprint(clip),
        },
        {"video_id": "y", "path": "/gone.mp4", "stage": "encode", "message": "boom"},
    ]
    path = ft.write_errors(errors, tmp_path)
    assert path == tmp_path / ft.ERRORS_FILE
    back = ft.read_errors(tmp_path)
    assert back[0] == errors[0]
    assert back[1] == {**errors[1], "fingerprint": ""}
    assert errors[0]["fingerprint"] == f"11:{clip.stat().st_mtime_ns}"
    assert ft.file_fingerprint(tmp_path / "missing.mp4") == "missing"


def test_errors_written_before_fingerprints_existed_still_read(tmp_path):
    old = pa.table({k: ["v"] for k in ("video_id", "path", "stage", "message")})
    pq.write_table(old, tmp_path / ft.ERRORS_FILE)
    assert ft.read_errors(tmp_path) == [
        {"video_id": "v", "path": "v", "stage": "v", "message": "v", "fingerprint": ""}
    ]


def test_parts_written_before_the_decoder_column_still_read(tmp_path, spec):
    new = ft.clips_to_table([_row("new", 2, decoder="decord")], spec)
    old = ft.clips_to_table([_row("old", 3)], spec).drop_columns(["decoder"])
    pq.write_table(old, tmp_path / "part-000000000000.parquet")
    pq.write_table(new, tmp_path / "part-111111111111.parquet")
    fs = ft.read_features(tmp_path)
    assert fs.video_id == ["new", "old"]
    assert [len(v) for v in fs.visual] == [2, 3]


def test_nested_to_numpy_handles_chunks_and_sliced_arrays(spec):
    arrays = [np.arange(t * 3, dtype=np.float32).reshape(t, 3) + 100 * t for t in (2, 0, 4)]
    col = ft._nested(arrays, 3)
    out = ft.nested_to_numpy(col)
    assert [a.shape for a in out] == [(2, 3), (0, 3), (4, 3)]
    for a, b in zip(out, arrays):
        np.testing.assert_array_equal(a, b)
    chunked = pa.chunked_array([col.slice(0, 1), col.slice(1, 2)])  # the second starts late
    for a, b in zip(ft.nested_to_numpy(chunked), arrays):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ft.nested_to_numpy(col.slice(2, 1))[0], arrays[2])
