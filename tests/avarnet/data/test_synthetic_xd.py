"""The generated benchmark in the XD-Violence layout: names, folders, annotations, the
reader round trip, partial events, determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from avarnet.data.decode import probe
from avarnet.data.manifest import parse_xd_name, read_manifest, read_xd_annotations
from avarnet.data.synthetic_xd import (
    ANNOTATIONS_FILE,
    INFO_FILE,
    VIOLENT_CODES,
    XD_SIGNATURES,
    generate_xd_benchmark,
    xd_split_counts,
)


@pytest.fixture(scope="module")
def xd(tmp_path_factory):
    out = tmp_path_factory.mktemp("xd")
    rows = generate_xd_benchmark(out, clips_per_class=2, seconds=5.0, seed=3)
    return out, rows


def test_layout_names_and_counts(xd):
    out, rows = xd
    assert sorted(p.name for p in out.iterdir()) == [ANNOTATIONS_FILE, "test", "train", INFO_FILE]
    # 2 violent per class + as many normal in train; ceil(2/2) per class + 0.6x normal in test
    assert xd_split_counts(rows) == {
        "test": {"violent": 6, "normal": 4},
        "train": {"violent": 12, "normal": 12},
    }
    for row in rows:
        stem = row["path"].rsplit("/", 1)[1].removesuffix(".mp4")
        assert "__#" in stem and re.search(r"_label_(A|[A-Z0-9]+-[A-Z0-9]+-[A-Z0-9]+)$", stem)
        assert parse_xd_name(stem) == row["labels"]
    primary = [r["labels"][0] for r in rows if r["split"] == "train" and r["label"] != "normal"]
    assert sorted(set(primary)) == sorted(
        parse_xd_name(f"x__#1_label_{c}")[0] for c in VIOLENT_CODES
    )


def test_multi_label_names(tmp_path):
    rows = generate_xd_benchmark(tmp_path, clips_per_class=1, seconds=4.0, multi_label_fraction=1)
    violent = [r for r in rows if r["label"] != "normal"]
    assert violent and all(len(r["labels"]) == 2 for r in violent)
    assert all(re.search(r"_label_[A-Z0-9]+-[A-Z0-9]+-0\.mp4$", r["path"]) for r in violent)


def test_reader_round_trip_and_annotations(xd):
    out, rows = xd
    result = read_manifest(out, format="xd-violence", annotations=out / ANNOTATIONS_FILE)
    assert result.problems == [] and result.rows == rows
    table, problems = read_xd_annotations(out / ANNOTATIONS_FILE)
    assert problems == []
    test_violent = [r for r in rows if r["split"] == "test" and r["label"] != "normal"]
    assert len(table) == len(test_violent)  # normal videos have no line
    lines = (out / ANNOTATIONS_FILE).read_text().splitlines()
    assert any(line.split()[0].endswith(".mp4") for line in lines)  # a stray .mp4, as released
    for row in rows:
        if row["split"] == "train":  # video-level labels only
            assert row["gt_intervals"] == [] and not row["gt_available"]


def test_events_cover_part_of_each_violent_clip(xd):
    out, rows = xd
    info = json.loads((out / INFO_FILE).read_text())["videos"]
    for row in rows:
        v = info[row["video_id"]]
        events = [iv for iv in v["intervals"] if iv["code"] is not None]
        covered = sum(iv["end"] - iv["start"] for iv in events)
        if row["label"] == "normal":
            assert not events
            continue
        assert 0 < covered < 0.8 * v["n_frames"]
        for iv in events:  # each event shows its class's signature pair
            assert (iv["visual"], iv["audio"]) == tuple(XD_SIGNATURES[iv["code"]])
        assert sorted(set(iv["code"] for iv in events)) == sorted(v["codes"])
    one = rows[0]
    info_one = probe(one["path"])
    assert info_one.fps == pytest.approx(16) and info_one.has_audio
    assert info_one.n_frames == info[one["video_id"]]["n_frames"]


def test_deterministic_for_a_seed(xd, tmp_path):
    out, rows = xd
    again = generate_xd_benchmark(tmp_path, clips_per_class=2, seconds=5.0, seed=3)
    assert [r["video_id"] for r in again] == [r["video_id"] for r in rows]
    first = rows[0]["path"]
    same = next(r["path"] for r in again if r["video_id"] == rows[0]["video_id"])
    assert Path(first).read_bytes() == Path(same).read_bytes()
    assert (out / ANNOTATIONS_FILE).read_text() == (tmp_path / ANNOTATIONS_FILE).read_text()
