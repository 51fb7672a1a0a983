"""The verbs that need no Ray: --json is exactly one JSON document on stdout."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from workflows.cli import main


def test_synth_manifest_inspect_print_one_json_document_each(tmp_path, capfd):
    out = tmp_path / "bench"
    args = ["synth", "--out", str(out), "--clips-per-class", "1", "--seconds", "1", "--json"]
    assert main(args) == 0
    synth = json.loads(capfd.readouterr().out)
    assert synth["clips"] == 10 and synth["manifest"].endswith("manifest.csv")

    # The folder holds synth's manifest.csv: it is read (splits, frame intervals kept).
    assert main(["manifest", str(out), "--json"]) == 0
    manifest = json.loads(capfd.readouterr().out)
    assert manifest["clips"] == 10 and manifest["format"] == "csv"
    assert manifest["annotated_clips"] == 10
    assert main(["manifest", str(out), "--format", "folders", "--json"]) == 0
    walked = json.loads(capfd.readouterr().out)
    assert walked["clips"] == 10 and walked["format"] == "folders"
    assert walked["annotated_clips"] == 0

    clip = next(out.glob("*/*.mp4"))
    assert main(["inspect", str(clip), "--json"]) == 0
    info = json.loads(capfd.readouterr().out)
    assert info["n_segments"] == 1 and info["has_audio"] and info["decoder"] == "decord"


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")
def test_inspect_names_the_decoder_that_reads_a_webm_without_duration(tmp_path, capfd):
    clip = tmp_path / "piped.webm"
    with clip.open("wb") as f:  # written to a pipe: no duration in the container
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=96x64:r=10:d=2",
             "-c:v", "libvpx", "-f", "webm", "pipe:1"],
            stdout=f, check=True,
        )  # fmt: skip
    assert main(["inspect", str(clip), "--json"]) == 0
    info = json.loads(capfd.readouterr().out)
    assert info["decoder"] == "pyav" and info["n_segments"] == 2
    assert info["duration_s"] == pytest.approx(2.0, abs=0.15)
