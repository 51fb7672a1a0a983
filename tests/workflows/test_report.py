"""The batch report page in headless Chromium (Debian's package), at phone and desktop widths.

No Ray: the page is written from hand-made clip dicts (the scoring service's answer plus
``video_id`` and ``path``) and opened from ``file://``.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from avarnet.scoring import find_events
from workflows.report import write_report

pytestmark = pytest.mark.integration

THRESHOLD = 0.5
EVIL_LABEL = "Riot</script><script>window.pwned=1</script><!--"


def _clip(video_id, path, label, scores, seg_s, *, has_audio=True, classes=None):
    segments = [
        {
            "start_s": i * seg_s,
            "end_s": (i + 1) * seg_s,
            "anomaly_score": s,
            "top_class": label if s >= THRESHOLD else "Normal",
        }
        for i, s in enumerate(scores)
    ]
    probs = classes or {label: 0.6, "Normal": 0.3, "Fighting": 0.07, "Shooting": 0.03}
    return {
        "video_id": video_id,
        "path": path,
        "label": label,
        "probabilities": probs,
        "segments": segments,
        "has_audio": has_audio,
        "duration_s": len(scores) * seg_s - 0.3,
        "decoder": "decord",
        "model": {"name": "avarnet-xd", "version": "3", "uri": "models:/avarnet-xd/3"},
        "timings_ms": {"upload": 1.0, "decode": 2.0, "encode": 3.0, "classify": 1.0, "total": 7.0},
    }


@pytest.fixture()
def report(tmp_path):
    clips = [
        # 10 s, one event (peak 0.8).
        _clip("a", "/data/clips/alpha.mp4", "Fighting", [0.1, 0.7, 0.8, 0.2, 0.1], 2.0),
        # 64 s, no audio, no event (peak 0.3).
        _clip(
            "b",
            "/data/clips/beta with a long directory name/" + "x" * 120 + ".mp4",
            "Normal",
            [0.1, 0.3, 0.2, 0.1] * 8,
            2.0,
            has_audio=False,
            classes={"Normal": 0.9, "Fighting": 0.1},
        ),
        # 30 s, two events (peak 0.95), a label that tries to close the script element.
        _clip(
            "c",
            "/data/</script>/gamma.mp4",
            EVIL_LABEL,
            [0.9, 0.95] + [0.1] * 10 + [0.6] * 3,
            2.0,
        ),
    ]
    events = [
        e
        for c in clips
        for e in find_events(c["video_id"], c["path"], c["segments"], threshold=THRESHOLD)
    ]
    out = write_report(
        clips, events, tmp_path / "report.html", title="Batch </title> run", threshold=THRESHOLD
    )
    return clips, events, out


def test_report_file_is_self_contained(report):
    clips, events, out = report
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # nothing from the network
    assert text.count("</script>") == 2  # the data tag's and the code's: no value closed one
    data = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    parsed = json.loads(data.group(1))
    assert [c["label"] for c in parsed["clips"]] == [c["label"] for c in clips]
    assert sum(len(c["events"]) for c in parsed["clips"]) == len(events) == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no tmp left


@pytest.mark.parametrize("width", [390, 1280])
def test_report_page_in_chromium(report, width, tmp_path, chromium):
    from playwright.sync_api import sync_playwright

    clips, events, out = report
    by_id = {c["video_id"]: c for c in clips}
    n_events = {c["video_id"]: sum(e.video_id == c["video_id"] for e in events) for c in clips}
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = chromium(pw)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(out.as_uri())
            page.wait_for_function(
                "document.querySelectorAll('section.clip rect.segment').length > 0"
            )
            title = page.title()
            pwned = page.evaluate("window.pwned === 1")
            shown = page.evaluate(
                """() => [...document.querySelectorAll('section.clip')].map((s) => ({
                    id: s.dataset.videoId,
                    label: s.querySelector('.label').textContent,
                    path: s.querySelector('.path').textContent,
                    segments: s.querySelectorAll('svg.timeline rect.segment').length,
                    events: s.querySelectorAll('svg.timeline rect.event').length,
                    threshold: s.querySelectorAll('svg.timeline line.threshold').length,
                    ticks: s.querySelectorAll('svg.timeline text.tick').length,
                    svgWidth: s.querySelector('svg.timeline').getBoundingClientRect().width,
                    sectionWidth: s.getBoundingClientRect().width,
                }))"""
            )
            default_order = [s["id"] for s in shown]
            page.select_option("#sort", "name")
            name_order = page.evaluate(
                "[...document.querySelectorAll('section.clip')].map((s) => s.dataset.videoId)"
            )
            overflow = page.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            summary = page.inner_text("#summary")
            if width == 1280:
                page.select_option("#sort", "peak")
                shot = tmp_path / "report-1280.png"
                page.screenshot(path=str(shot), full_page=True)
                shutil.copy(shot, "/tmp/report-screenshot.png")
                print(f"screenshot: {shot} (copied to /tmp/report-screenshot.png)")
        finally:
            browser.close()

    assert title == "Batch </title> run"
    assert not pwned
    assert len(shown) == len(clips)
    for s in shown:
        clip = by_id[s["id"]]
        assert s["label"] == clip["label"] and s["path"] == clip["path"]
        assert s["segments"] == len(clip["segments"])
        assert s["events"] == n_events[s["id"]]
        assert s["threshold"] == 1 and s["ticks"] >= 3
        assert s["svgWidth"] <= s["sectionWidth"]
    assert n_events == {"a": 1, "b": 0, "c": 2}
    assert default_order == ["c", "a", "b"]  # peak 0.95, 0.8, 0.3
    assert name_order == ["a", "c", "b"]  # alpha, gamma, xxx...
    assert overflow[0] <= overflow[1], overflow
    assert "avarnet-xd v3" in summary and "3 clips" in summary and "3 events" in summary
    assert "threshold 0.50" in summary
    assert errors == []
