"""Importing released XD-Violence features (I3D RGB five crops + VGGish): the layout is
written into tmp_path exactly as released (names with '#' and label codes, (T, 1024)
float32 per crop, (T - 1, 128) audio), and every convention is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avarnet.features import imported as imp
from avarnet.features.table import read_features, read_spec

ROOT = Path(__file__).resolve().parents[3]

TRAIN = {
    "Bad.Boys.1995__#00-26-51_00-27-53_label_B2-0-0": 9,
    "Deadpool.2016__#0-06-50_0-08-49_label_B1-B2-B6": 7,
    "v=S-7rRLrxnVQ__#1_label_B4-0-0": 6,
    "A.Beautiful.Mind.2001__#00-01-45_00-02-50_label_A": 8,
    "v=0a2aL3BLbAA__#1_label_A": 5,
}
TEST = {
    "Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6": 10,
    "v=wVey5JDRf_g__#00-01-30_00-02-41_label_B6-0-0": 6,
    "Black.Hawk.Down.2001__#01-13-59_01-14-49_label_A": 7,
}
ANNOTATIONS = (
    "Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6 16 40 100 130\n"
    "v=wVey5JDRf_g__#00-01-30_00-02-41_label_B6-0-0.mp4 0 20\n"  # a stray .mp4, as released
)


def _crop(seed: int, t: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((t, 1024)).astype(np.float32)


def write_video(
    rgb_dir: Path, audio_dir: Path, name: str, t: int, *, audio_t: int | None = None, seed=0
) -> None:
    """One video as released: five crops ``<name>__<k>.npy`` (T, 1024) and
    ``<name>__vggish.npy`` (T - 1, 128) unless ``audio_t`` says otherwise."""
    rgb_dir.mkdir(parents=True, exist_ok=True)
    audio_dir.mkdir(parents=True, exist_ok=True)
    for k in range(5):
        np.save(rgb_dir / f"{name}__{k}.npy", _crop(seed * 10 + k, t))
    ta = t - 1 if audio_t is None else audio_t
    audio = np.random.default_rng(seed + 1000).standard_normal((ta, 128)).astype(np.float32)
    np.save(audio_dir / f"{name}__vggish.npy", audio)


@pytest.fixture
def released(tmp_path) -> Path:
    """i3d/RGB (train) + i3d/RGBTest (test) and vggish/train + vggish/test, as released."""
    root = tmp_path / "xd"
    for i, (name, t) in enumerate(TRAIN.items()):
        write_video(root / "i3d" / "RGB_train", root / "vggish" / "train", name, t, seed=i)
    for i, (name, t) in enumerate(TEST.items()):
        write_video(root / "i3d" / "RGBTest", root / "vggish" / "test", name, t, seed=50 + i)
    (root / "annotations.txt").write_text(ANNOTATIONS)
    (root / "i3d" / "RGBTest" / "notes.npy").write_bytes(b"")  # another .npy: ignored
    return root


def test_imports_the_released_layout(released, tmp_path):
    out = tmp_path / "table"
    summary = imp.import_xd_features(released, out, annotations=released / "annotations.txt")
    assert summary["videos"] == 8 and summary["rows"] == 8
    assert summary["violent_normal"] == {
        "train": {"violent": 3, "normal": 2},
        "test": {"violent": 2, "normal": 1},
    }
    assert summary["dropped_last_rgb"] == 8  # audio is one snippet shorter everywhere
    assert summary["ignored_npy"] == 1 and summary["problems"] == []
    fs = read_features(out)
    by_id = {v: i for i, v in enumerate(fs.video_id)}
    assert set(by_id) == set(TRAIN) | set(TEST)  # names with '#' kept as they are
    # The FeatureSpec names the external backbones and the snippet grid.
    spec = read_spec(out)
    assert (spec.visual_backbone, spec.audio_backbone) == ("external:i3d-rgb", "external:vggish")
    assert (spec.visual_dim, spec.audio_dim, spec.segment_frames) == (1024, 128, 16)
    assert imp.encoder_problem(spec) is not None
    i = by_id["Deadpool.2016__#0-06-50_0-08-49_label_B1-B2-B6"]
    assert fs.labels[i] == ["fighting", "shooting", "car_accident"] and fs.label[i] == "fighting"
    assert fs.split[i] == "train" and not fs.gt_available[i]
    # mean of the five crops, last RGB snippet dropped to pair with the (T - 1) audio
    crops = np.stack([_crop(1 * 10 + k, 7) for k in range(5)])
    np.testing.assert_allclose(fs.visual[i], crops.mean(0)[:-1], rtol=1e-6)
    assert fs.audio[i].shape == (6, 128) and fs.duration_s[i] == pytest.approx(6 * 16 / 24)
    # test videos: intervals from the annotations (the stray .mp4 accepted), normal = []
    j = by_id["Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6"]
    assert fs.split[j] == "test" and fs.gt_available[j]
    assert fs.gt_intervals[j] == [[16, 40], [100, 130]]
    np.testing.assert_array_equal(fs.segment_gt[j], [0, 1, 1, 0, 0, 0, 1, 1, 1])
    k = by_id["v=wVey5JDRf_g__#00-01-30_00-02-41_label_B6-0-0"]
    assert fs.gt_intervals[k] == [[0, 20]]
    n = by_id["Black.Hawk.Down.2001__#01-13-59_01-14-49_label_A"]
    assert fs.gt_available[n] and fs.gt_intervals[n] == [] and not fs.segment_gt[n].any()
    provenance = json.loads((out / imp.IMPORT_FILE).read_text())
    assert provenance["crops"] == "mean" and provenance["videos"] == 8


def test_each_crop_is_a_training_row_and_test_rows_are_averaged(released, tmp_path):
    out = tmp_path / "table"
    summary = imp.import_xd_features(
        released, out, annotations=released / "annotations.txt", crops="each"
    )
    assert summary["rows"] == 5 * 5 + 3
    assert summary["split_counts"] == {"train": 25, "test": 3}
    fs = read_features(out)
    ids = set(fs.video_id)
    name = "v=S-7rRLrxnVQ__#1_label_B4-0-0"
    assert {f"{name}__{k}" for k in range(5)} <= ids and name not in ids
    i = fs.video_id.index(f"{name}__3")
    np.testing.assert_allclose(fs.visual[i], _crop(2 * 10 + 3, 6)[:-1])
    assert fs.labels[i] == ["riot"] and fs.split[i] == "train"
    test_name = "Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6"
    assert test_name in ids and f"{test_name}__0" not in ids


@pytest.mark.parametrize(("audio_t", "dropped", "t_out"), [(9, 1, 9), (10, 0, 10), (11, -1, 10)])
def test_audio_pairing_rule(audio_t, dropped, t_out):
    rgb = np.zeros((5, 10, 1024), np.float32)
    rgb[:, -1] = 7.0  # the last RGB snippet
    r, a, d = imp.pair_audio(rgb, np.zeros((audio_t, 128), np.float32))
    assert d == dropped and r.shape[1] == a.shape[0] == t_out
    assert (r[:, -1] == 7.0).all() == (dropped != 1)


def test_audio_off_by_more_than_one_names_the_files(tmp_path):
    name = "v=abc__#1_label_B1-0-0"
    write_video(tmp_path / "train", tmp_path / "train", name, 10, audio_t=8)
    with pytest.raises(imp.FeatureImportError, match=r"__vggish\.npy: 8 audio snippets for 10"):
        imp.import_xd_features(tmp_path, tmp_path / "out")


def test_a_missing_crop_is_an_error(tmp_path):
    name = "v=abc__#1_label_B1-0-0"
    write_video(tmp_path / "train", tmp_path / "train", name, 6)
    (tmp_path / "train" / f"{name}__3.npy").unlink()
    with pytest.raises(imp.FeatureImportError, match=r"crop\(s\) 3 of v=abc__#1_label_B1-0-0"):
        imp.import_xd_features(tmp_path, tmp_path / "out")


def test_missing_audio_is_an_error(tmp_path):
    name = "v=abc__#1_label_B1-0-0"
    write_video(tmp_path / "train", tmp_path / "train", name, 6)
    (tmp_path / "train" / f"{name}__vggish.npy").unlink()
    with pytest.raises(imp.FeatureImportError, match="no audio features"):
        imp.import_xd_features(tmp_path, tmp_path / "out")


def test_no_npy_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(imp.FeatureImportError, match="no released features found"):
        imp.import_xd_features(tmp_path, tmp_path / "out")


def test_unknown_label_code_is_an_error(tmp_path):
    write_video(tmp_path / "train", tmp_path / "train", "v=abc__#1_label_B3-0-0", 6)
    with pytest.raises(imp.FeatureImportError, match=r"unknown label code\(s\) 'B3'"):
        imp.import_xd_features(tmp_path, tmp_path / "out")


def test_wrong_shape_is_an_error(tmp_path):
    name = "v=abc__#1_label_B1-0-0"
    write_video(tmp_path / "train", tmp_path / "train", name, 6)
    np.save(tmp_path / "train" / f"{name}__2.npy", np.zeros((6, 2048), np.float32))
    with pytest.raises(imp.FeatureImportError, match=r"expected \(T, 1024\) I3D RGB"):
        imp.import_xd_features(tmp_path, tmp_path / "out")


def test_split_without_folders_comes_from_the_annotations_or_is_an_error(tmp_path):
    root = tmp_path / "flat"
    write_video(root, root, "v=abc__#1_label_B1-0-0", 6)
    write_video(root, root, "v=def__#1_label_A", 6)
    ann = tmp_path / "ann.txt"
    ann.write_text("v=abc__#1_label_B1-0-0 0 16\n")
    with pytest.raises(imp.FeatureImportError, match="v=def__#1_label_A__0.npy: no split"):
        imp.import_xd_features(root, tmp_path / "out", annotations=ann)
    for f in root.glob("v=def*"):
        f.unlink()
    summary = imp.import_xd_features(root, tmp_path / "out", annotations=ann)
    assert summary["violent_normal"] == {"test": {"violent": 1, "normal": 0}}


def _lists(root: Path, lst_dir: Path, audio_repeat: int) -> list[Path]:
    """Official-style lists: the original machine's absolute paths, five consecutive
    crop lines per video, audio once or repeated ``audio_repeat`` times; violent first."""
    lst_dir.mkdir(parents=True, exist_ok=True)
    base = "/media/peng/Samsung_T5"
    out = []
    for split, names, rgb_dir, a_dir in (
        ("", TRAIN, "i3d-features/RGB", "vggish-features/train"),
        ("_test", TEST, "i3d-features/RGBTest", "vggish-features/test"),
    ):
        order = sorted(names, key=lambda n: ("_label_A" in n, n))
        rgb = [f"{base}/{rgb_dir}/{n}__{k}.npy" for n in order for k in range(5)]
        audio = [f"{base}/{a_dir}/{n}__vggish.npy" for n in order for _ in range(audio_repeat)]
        (lst_dir / f"rgb{split}.list").write_text("\n".join(rgb) + "\n")
        (lst_dir / f"audio{split}.list").write_text("\n".join(audio) + "\n")
        out += [lst_dir / f"rgb{split}.list", lst_dir / f"audio{split}.list"]
    return out


@pytest.mark.parametrize("audio_repeat", [1, 5])
def test_official_lists_give_videos_split_and_order(tmp_path, audio_repeat):
    root = tmp_path / "features"  # no train/test folder names at all
    for i, (name, t) in enumerate({**TRAIN, **TEST}.items()):
        write_video(root / "rgb", root / "audio", name, t, seed=i)
    write_video(root / "rgb", root / "audio", "v=unlisted__#1_label_B1-0-0", 6)
    lists = _lists(root, tmp_path / "list", audio_repeat)
    out = tmp_path / "table"
    summary = imp.import_xd_features(root, out, lists=lists)
    assert summary["videos"] == 8  # the unlisted video is not imported
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(out.glob("part-*.parquet"))[0])
    order = [n for n in (Path(x).read_text().split("\n")[0::5] for x in lists[:1])][0]
    listed_train = [Path(p).name.rsplit("__", 1)[0] for p in order if p]
    ids = table.column("video_id").to_pylist()
    assert ids[: len(listed_train)] == listed_train  # list order kept in the part files
    fs = read_features(out)
    splits = dict(zip(fs.video_id, fs.split))
    assert all(splits[n] == "train" for n in TRAIN) and all(splits[n] == "test" for n in TEST)
    assert "v=unlisted__#1_label_B1-0-0" not in splits


def test_a_list_naming_a_missing_file_is_an_error(tmp_path):
    root = tmp_path / "features"
    for i, (name, t) in enumerate({**TRAIN, **TEST}.items()):
        write_video(root / "rgb", root / "audio", name, t, seed=i)
    lists = _lists(root, tmp_path / "list", 1)
    name = next(iter(TEST))
    (root / "rgb" / f"{name}__2.npy").unlink()
    with pytest.raises(imp.FeatureImportError, match=r"rgb_test\.list:3: .*__2\.npy: no such file"):
        imp.import_xd_features(root, tmp_path / "out", lists=lists)


def test_val_fraction_moves_training_videos_to_val(released, tmp_path):
    out = tmp_path / "table"
    summary = imp.import_xd_features(
        released, out, annotations=released / "annotations.txt", val_fraction=0.4, crops="each"
    )
    fs = read_features(out)
    val = {v for v, s in zip(fs.video_id, fs.split) if s == "val"}
    assert val and all("__" not in v.rsplit("_label_", 1)[1] for v in val)  # averaged rows
    assert summary["split_counts"]["test"] == 3


def test_an_existing_table_is_not_overwritten(released, tmp_path):
    out = tmp_path / "table"
    imp.import_xd_features(released, out)
    with pytest.raises(imp.FeatureImportError, match="already exists"):
        imp.import_xd_features(released, out)
    imp.import_xd_features(released, out, force=True)


def test_extracted_specs_have_encoders(tiny_spec):
    assert imp.encoder_problem(tiny_spec) is None


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workflows.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_cli_imports_and_errors_are_one_line(released, tmp_path):
    out = tmp_path / "table"
    ok = _cli(
        "import-features",
        "--format",
        "xd-i3d-vggish",
        str(released),
        "--annotations",
        str(released / "annotations.txt"),
        "--out",
        str(out),
        "--json",
    )
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["videos"] == 8 and result["violent_normal"]["test"]["violent"] == 2
    (released / "i3d" / "RGB_train" / f"{next(iter(TRAIN))}__4.npy").unlink()
    bad = _cli("import-features", str(released), "--out", str(tmp_path / "t2"))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avarnet: error: ") and "crop(s) 4" in lines[0]
