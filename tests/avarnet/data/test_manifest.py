"""Dataset readers (VAAR folders, CSV, XD-Violence), the stratified split and ground truth.

Readers never decode, so the "videos" here are small placeholder files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from avarnet.data.manifest import (
    CSV_COLUMNS,
    ManifestError,
    assign_splits,
    detect_format,
    frame_ground_truth,
    parse_xd_name,
    read_manifest,
    segment_ground_truth,
    write_manifest_csv,
)


def _touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\0")


def _by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["video_id"]: r for r in rows}


# --------------------------------------------------------------------------- folders
def test_a_folder_with_its_own_manifest_csv_is_read_from_it(tmp_path):
    """What `avarnet synth` writes (clips + manifest.csv): `extract --data DIR` keeps the
    manifest's splits and frame intervals instead of walking the folders, which would lose
    both; --format folders still walks."""
    _touch(tmp_path, "Abuse/a1.mp4", "Abuse/a2.mp4", "Normal/n1.mp4", "Normal/n2.mp4")
    given = {  # video_id: (split, gt_intervals)
        "Abuse/a1": ("test", [[3, 9]]),
        "Abuse/a2": ("train", [[0, 4]]),
        "Normal/n1": ("test", []),
        "Normal/n2": ("val", []),
    }
    rows = [
        {
            "video_id": vid,
            "path": str(tmp_path / f"{vid}.mp4"),
            "label": vid.split("/")[0],
            "split": split,
            "gt_intervals": gt,
            "gt_available": True,
        }
        for vid, (split, gt) in given.items()
    ]
    write_manifest_csv(rows, tmp_path / "manifest.csv")
    result = read_manifest(tmp_path)
    assert result.format == "csv" == detect_format(tmp_path)
    got = _by_id(result.rows)
    assert {k: r["split"] for k, r in got.items()} == {k: v[0] for k, v in given.items()}
    assert got["Abuse/a1"]["gt_intervals"] == [[3, 9]] and got["Normal/n1"]["gt_available"]
    walked = _by_id(read_manifest(tmp_path, format="folders").rows)
    assert sorted(walked) == sorted(got)
    assert walked["Abuse/a1"]["gt_intervals"] == [] and not walked["Abuse/a1"]["gt_available"]


def test_vaar_folders_give_labels_ids_and_problems(tmp_path):
    _touch(
        tmp_path,
        "Abuse/a1.mp4",
        "Abuse/a2.AVI",
        "Abuse/day2/a3.mkv",  # nested below the class folder
        "Abuse/notes.txt",  # ignored
        "Abuse/.hidden.mp4",  # ignored
        "BabyCry/b1.mov",
        "BabyCry/b2.webm",
        "BabyCry/b3.m4v",
        "Crash/c1.mp4",
        "Crash/c1.avi",  # same video_id as c1.mp4: the first in sorted order wins
        "stray.mp4",  # not inside a class folder -> problem
        "README.md",
    )
    (tmp_path / "Empty").mkdir()
    result = read_manifest(tmp_path)
    assert result.format == "folders" == detect_format(tmp_path)
    rows = _by_id(result.rows)
    assert sorted(rows) == [
        "Abuse/a1",
        "Abuse/a2",
        "Abuse/day2/a3",
        "BabyCry/b1",
        "BabyCry/b2",
        "BabyCry/b3",
        "Crash/c1",
    ]
    a3 = rows["Abuse/day2/a3"]
    assert a3["label"] == "Abuse" and a3["labels"] == ["Abuse"]
    assert a3["path"] == str(tmp_path / "Abuse/day2/a3.mkv")
    assert a3["gt_intervals"] == [] and a3["gt_available"] is False
    assert all(r["split"] in ("train", "val", "test") for r in result.rows)
    reasons = {Path(p["file"]).name: p["reason"] for p in result.problems}
    assert "duplicate video_id 'Crash/c1'" in reasons["c1.mp4"]
    assert reasons["stray.mp4"] == "not inside a class folder"
    assert reasons["Empty"] == "no video files"
    # Each class with >= 3 clips has one clip in train, val and test.
    assert sorted(r["split"] for r in result.rows if r["label"] == "BabyCry") == [
        "test",
        "train",
        "val",
    ]


def test_vaar_split_folders_give_the_split(tmp_path):
    _touch(
        tmp_path,
        "train/Abuse/a1.mp4",
        "train/Crash/c1.mp4",
        "Val/Abuse/a2.mp4",
        "TEST/Crash/c2.mp4",
        "test/Abuse/a3.mp4",
        "other/Abuse/x.mp4",  # outside the split folders -> problem
    )
    result = read_manifest(tmp_path, format="folders")
    got = {r["video_id"]: (r["label"], r["split"]) for r in result.rows}
    assert got == {
        "train/Abuse/a1": ("Abuse", "train"),
        "train/Crash/c1": ("Crash", "train"),
        "Val/Abuse/a2": ("Abuse", "val"),
        "TEST/Crash/c2": ("Crash", "test"),
        "test/Abuse/a3": ("Abuse", "test"),
    }
    assert [p["reason"] for p in result.problems] == ["outside the train/val/test folders"]


def test_missing_path_and_empty_dataset_are_clear_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ManifestError, match="no such file or directory") as info:
        read_manifest(missing)
    assert str(missing) in str(info.value)
    (tmp_path / "empty" / "Abuse").mkdir(parents=True)
    (tmp_path / "empty" / "Abuse" / "notes.txt").write_text("x")
    with pytest.raises(ManifestError, match="no clips found"):
        read_manifest(tmp_path / "empty")
    with pytest.raises(ManifestError, match="unknown format"):
        read_manifest(tmp_path / "empty", format="parquet")


# --------------------------------------------------------------------------- csv
def test_csv_minimal_columns_with_relative_paths(tmp_path):
    _touch(tmp_path, "clips/one.mp4", "clips/two.mp4", "clips/three.mp4")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(
        "path,label,split\n"
        "clips/one.mp4,Abuse,train\n"
        f"{tmp_path / 'clips/two.mp4'},Crash,\n"  # absolute path, no split
        "clips/three.mp4,Crash,Validation\n"
        "clips/missing.mp4,Crash,test\n"  # no such file -> problem
        "clips/one.mp4,Abuse,holdout\n"  # bad split -> problem
    )
    result = read_manifest(csv_path)
    assert result.format == "csv"
    rows = _by_id(result.rows)
    assert sorted(rows) == ["clips/one", "clips/three", "clips/two"]
    assert rows["clips/one"]["path"] == str(tmp_path / "clips/one.mp4")
    assert rows["clips/one"]["split"] == "train"
    assert rows["clips/three"]["split"] == "val"
    assert rows["clips/two"]["split"] in ("train", "val", "test")  # assigned
    assert rows["clips/two"]["labels"] == ["Crash"]
    reasons = [p["reason"] for p in result.problems]
    assert reasons[0] == "no such file"
    assert "unknown split 'holdout'" in reasons[1]


def test_csv_needs_a_header_with_path_and_label(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.mp4,Abuse\n")
    with pytest.raises(ManifestError, match="needs a header"):
        read_manifest(bad)


def test_own_csv_round_trips_exactly(tmp_path):
    data = tmp_path / "data"
    _touch(data, "Abuse/a.mp4", "Abuse/b.mp4", "x/v=S-7rRLrxnVQ__#1_label_B4-B1-0.mp4")
    _touch(tmp_path, "elsewhere/c.mp4")
    rows = [
        {
            "video_id": "Abuse/a",
            "path": str(data / "Abuse/a.mp4"),
            "label": "Abuse",
            "labels": ["Abuse"],
            "split": "train",
            "gt_intervals": [[3, 10], [20, 25]],
            "gt_available": True,
        },
        {
            "video_id": "Abuse/b",
            "path": str(data / "Abuse/b.mp4"),
            "label": "Abuse",
            "labels": ["Abuse"],
            "split": "test",
            "gt_intervals": [],
            "gt_available": True,  # annotated, nothing anomalous
        },
        {
            "video_id": "x/v=S-7rRLrxnVQ__#1_label_B4-B1-0",
            "path": str(data / "x/v=S-7rRLrxnVQ__#1_label_B4-B1-0.mp4"),
            "label": "riot",
            "labels": ["riot", "fighting"],
            "split": "val",
            "gt_intervals": [],
            "gt_available": False,
        },
        {
            "video_id": "c",
            "path": str(tmp_path / "elsewhere/c.mp4"),  # outside the CSV's folder
            "label": "Normal",
            "labels": ["Normal"],
            "split": "train",
            "gt_intervals": [],
            "gt_available": False,
        },
    ]
    out = write_manifest_csv(rows, data / "manifest.csv")
    assert out == data / "manifest.csv"
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert lines[1] == "Abuse/a,Abuse/a.mp4,Abuse,Abuse,train,3-10;20-25,true"
    assert str(tmp_path / "elsewhere/c.mp4") in lines[4]  # absolute when outside
    assert [p for p in os.listdir(data) if p.endswith(".tmp")] == []
    back = read_manifest(out)
    assert back.rows == rows and back.problems == []
    # The folder moves as a whole: relative paths follow it.
    moved = tmp_path / "moved"
    os.rename(data, moved)
    again = read_manifest(moved / "manifest.csv")
    assert again.rows[0]["path"] == str(moved / "Abuse/a.mp4")


# --------------------------------------------------------------------------- xd-violence
@pytest.mark.parametrize(
    ("name", "labels"),
    [
        (
            "Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6.mp4",
            ["explosion", "shooting", "car_accident"],
        ),
        ("v=S-7rRLrxnVQ__#1_label_B4-0-0", ["riot"]),
        ("A.Beautiful.Mind.2001__#00-25-20_00-29-20_label_A", ["normal"]),
        ("Movie__#00-01-00_00-02-00_label_B5-B1-0.mp4", ["abuse", "fighting"]),
        ("Movie__#1_label_B6-0-B2.mp4", ["car_accident", "shooting"]),
    ],
)
def test_parse_xd_name(name, labels):
    assert parse_xd_name(name) == labels


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Some.Movie__#00-01-00_00-02-00.mp4", "not an XD-Violence name"),
        ("Movie__#1_label_B3-0-0.mp4", "unknown label code(s) 'B3'"),
        ("Movie__#1_label_0-B1-0.mp4", "first label slot is empty"),
        ("Movie__#1_label_B1-B2-B4-B5.mp4", "more than three"),
        ("Movie__#1_label_A-B1-0.mp4", "normal code A combined"),
    ],
)
def test_parse_xd_name_rejects(name, reason):
    with pytest.raises(ValueError, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        parse_xd_name(name)


XD_FILES = {
    "videos/train/Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6.mp4": [
        "explosion",
        "shooting",
        "car_accident",
    ],
    "videos/train/v=S-7rRLrxnVQ__#1_label_B4-0-0.mp4": ["riot"],
    "videos/train/Movie.A__#00-00-10_00-01-00_label_A.mp4": ["normal"],
    "videos/Test_videos/Heat.1995__#00-10-00_00-11-00_label_B2-0-0.mp4": ["shooting"],
    "videos/Test_videos/v=wVey5JDRf_g__#00-01-30_00-02-41_label_B6-0-0.mp4": ["car_accident"],
    "videos/Test_videos/Normal.Day__#00-00-00_00-00-30_label_A.mp4": ["normal"],
    "videos/Test_videos/Riot.X__#1_label_B4-B1-0.mp4": ["riot", "fighting"],
}


def _xd_tree(root: Path) -> None:
    _touch(root, *XD_FILES, "videos/Test_videos/Broken__#1_label_B3-0-0.mp4", "videos/list.txt")


def test_xd_violence_names_labels_and_folder_splits(tmp_path):
    _xd_tree(tmp_path)
    result = read_manifest(tmp_path)
    assert result.format == "xd-violence"
    rows = {Path(r["path"]).name: r for r in result.rows}
    assert len(rows) == len(XD_FILES)
    for rel, labels in XD_FILES.items():
        row = rows[Path(rel).name]
        assert row["labels"] == labels and row["label"] == labels[0]
        assert row["video_id"] == rel[: -len(".mp4")] and "#" in row["video_id"]
        assert row["split"] == ("test" if "/Test_videos/" in rel else "train")
    # Normal videos in the test split are ground-truthed as "nothing anomalous"; violent
    # ones without annotations are not ground-truthed.
    assert rows["Normal.Day__#00-00-00_00-00-30_label_A.mp4"]["gt_available"] is True
    assert rows["Movie.A__#00-00-10_00-01-00_label_A.mp4"]["gt_available"] is False
    assert rows["Heat.1995__#00-10-00_00-11-00_label_B2-0-0.mp4"]["gt_available"] is False
    (problem,) = result.problems
    assert problem["file"].endswith("Broken__#1_label_B3-0-0.mp4")
    assert "unknown label code" in problem["reason"]
    # A multi-label clip counts once for each of its labels.
    counts = result.summary()["label_counts"]
    assert counts == {
        "car_accident": 2,
        "explosion": 1,
        "fighting": 1,
        "normal": 2,
        "riot": 2,
        "shooting": 2,
    }


def test_xd_violence_annotations(tmp_path):
    _xd_tree(tmp_path)
    ann = tmp_path / "annotations.txt"
    ann.write_text(
        "v=wVey5JDRf_g__#00-01-30_00-02-41_label_B6-0-0 142 296 447 508\n"
        "Heat.1995__#00-10-00_00-11-00_label_B2-0-0.mp4 0 16\n"  # stray .mp4
        "\n"
        "Riot.X__#1_label_B4-B1-0 10 20 30\n"  # odd count -> problem
        "Gone.Movie__#1_label_B1-0-0 5 9\n"  # no such video -> problem
    )
    result = read_manifest(tmp_path, annotations=ann)
    rows = {Path(r["path"]).stem: r for r in result.rows}
    car = rows["v=wVey5JDRf_g__#00-01-30_00-02-41_label_B6-0-0"]
    assert car["gt_intervals"] == [[142, 296], [447, 508]] and car["gt_available"]
    heat = rows["Heat.1995__#00-10-00_00-11-00_label_B2-0-0"]
    assert heat["gt_intervals"] == [[0, 16]] and heat["gt_available"]
    riot = rows["Riot.X__#1_label_B4-B1-0"]
    assert riot["gt_intervals"] == [] and not riot["gt_available"]
    reasons = [p["reason"] for p in result.problems]
    assert any("odd count of numbers (3)" in r for r in reasons)
    assert any(r == "Gone.Movie__#1_label_B1-0-0: no such video" for r in reasons)
    assert result.summary()["annotated_clips"] == 3  # two annotated + the normal test video


def test_xd_violence_annotated_videos_are_test_without_split_folders(tmp_path):
    names = [Path(rel).name for rel in XD_FILES]
    _touch(tmp_path, *names)
    ann = tmp_path / "ann.txt"
    ann.write_text("Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6 1 5\n")
    result = read_manifest(tmp_path, format="xd-violence", annotations=ann)
    rows = {Path(r["path"]).name: r for r in result.rows}
    assert rows[names[0]]["split"] == "test" and rows[names[0]]["gt_available"]
    assert result.problems == []


# --------------------------------------------------------------------------- splits
def _rows(counts: dict[str, int]) -> list[dict]:
    return [
        {"video_id": f"{label}/{i:03d}", "label": label, "labels": [label], "split": None}
        for label, n in counts.items()
        for i in range(n)
    ]


def test_split_is_stratified_and_deterministic():
    counts = {"Abuse": 20, "Crash": 7, "Pain": 3, "Rare": 2, "Single": 1}
    rows = assign_splits(_rows(counts), seed=0)
    per = {
        label: [
            sum(r["split"] == s for r in rows if r["label"] == label)
            for s in ("train", "val", "test")
        ]
        for label in counts
    }
    assert per == {
        "Abuse": [14, 3, 3],
        "Crash": [5, 1, 1],
        "Pain": [1, 1, 1],
        "Rare": [2, 0, 0],
        "Single": [1, 0, 0],
    }
    again = assign_splits(_rows(counts), seed=0)
    assert [r["split"] for r in again] == [r["split"] for r in rows]
    other = assign_splits(_rows(counts), seed=1)
    assert [r["split"] for r in other] != [r["split"] for r in rows]
    # One class's split does not depend on which other classes are present, nor on order.
    alone = assign_splits(_rows({"Crash": 7})[::-1], seed=0)
    assert {r["video_id"]: r["split"] for r in alone} == {
        r["video_id"]: r["split"] for r in rows if r["label"] == "Crash"
    }


def test_split_keeps_given_splits_and_checks_fractions():
    rows = _rows({"Abuse": 4})
    rows[0]["split"] = "test"
    assign_splits(rows, seed=0)
    assert rows[0]["split"] == "test"
    assert all(r["split"] in ("train", "val", "test") for r in rows)
    with pytest.raises(ValueError):
        assign_splits(_rows({"Abuse": 4}), fractions=(0.5, -0.1, 0.6))


# --------------------------------------------------------------------------- ground truth
def test_frame_and_segment_ground_truth():
    gt = frame_ground_truth([[2, 5], [8, 20]], 10)
    assert gt.dtype == np.uint8
    np.testing.assert_array_equal(gt, [0, 0, 1, 1, 1, 0, 0, 0, 1, 1])
    assert not frame_ground_truth([], 4).any()
    # Segments of 4 frames: [0,4) [4,8) [8,12) [12,16); an empty segment is 0.
    seg = segment_ground_truth([[5, 6], [12, 13]], [0, 4, 8, 12, 16, 16])
    assert seg.dtype == np.int8
    np.testing.assert_array_equal(seg, [0, 1, 0, 1, 0])
    # XD-Violence snippets: 16 frames each.
    np.testing.assert_array_equal(
        segment_ground_truth([[142, 296]], np.arange(0, 321, 16)),
        (np.arange(20) >= 8) & (np.arange(20) <= 18),
    )
    with pytest.raises(ValueError):
        segment_ground_truth([], [4, 2])


def test_summary_fields(tmp_path):
    _touch(tmp_path, "Abuse/a.mp4", "Crash/c.mp4")
    s = read_manifest(tmp_path).summary()
    assert s["clips"] == 2 and s["format"] == "folders"
    assert s["label_counts"] == {"Abuse": 1, "Crash": 1}
    assert s["split_counts"] == {"train": 2, "val": 0, "test": 0}
    assert s["annotated_clips"] == 0 and s["problems"] == []
