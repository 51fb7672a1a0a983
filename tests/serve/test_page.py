"""The web page on a phone (390 px) and a desktop (1280 px): headless Chromium (Debian's
package) against the real service, real clips (a benchmark clip and two cut by Debian's
ffmpeg to lengths that do not fill the segment grid)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

FFMPEG = "/usr/bin/ffmpeg"
SCORE_TIMEOUT_MS = 120_000
PX = 0.75  # tolerance in CSS/viewBox pixels (the chart is drawn 1:1 to its container)


def _require(path: str, what: str) -> None:
    if not os.path.exists(path):
        if os.environ.get("AVARNET_REQUIRE_BROWSER"):
            pytest.fail(f"{path} is missing (make test installs Debian's {what})")
        pytest.skip(f"{path} is not installed (apt-get install {what})")


@pytest.fixture(scope="module")
def browser(chromium):
    """One headless Chromium for the module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = chromium(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def clips(bench_rows, tmp_path_factory) -> dict[str, Path]:
    """A 3 s benchmark clip with audio, and 2.38 s and 0.1 s clips made with ffmpeg: the
    first leaves a tail no 1 s segment covers, the second is shorter than its one segment."""
    from avarnet.data.decode import probe

    _require(FFMPEG, "ffmpeg")
    out = tmp_path_factory.mktemp("page-clips")
    made = {"bench": next(Path(r["path"]) for r in bench_rows if probe(r["path"]).has_audio)}
    for name, seconds in (("tail", "2.38"), ("short", "0.1")):
        path = out / f"{name}_{seconds}s.mp4"
        subprocess.run(
            [FFMPEG, "-loglevel", "error", "-y"]
            + ["-f", "lavfi", "-i", "testsrc=size=128x96:rate=25"]
            + ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000"]
            + ["-t", seconds, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
            check=True,
            timeout=60,
        )
        made[name] = path
    bad = out / "notes.txt"
    bad.write_text("not a video\n")
    made["bad"] = bad
    return made


# The page's state at one instant: what is on screen of the result, and the form.
STATE_JS = """() => {
  const result = document.getElementById('result');
  return {
    hidden: result.hidden,
    displayed: result.getClientRects().length > 0,
    label: document.getElementById('label').textContent,
    probs: document.querySelectorAll('tr.prob').length,
    bars: document.querySelectorAll('svg#timeline rect.segment').length,
    status: document.getElementById('status').textContent,
    submit_disabled: document.getElementById('submit').disabled,
  };
}"""

# The layout: page overflow, the chart's box and, in the SVG's own units, the axis, the bars,
# the ticks and the marks for the unscored part and the clip's end.
LAYOUT_JS = """() => {
  const doc = document.documentElement;
  const svg = document.getElementById('timeline');
  const box = svg.getBoundingClientRect();
  const bbox = (el) => { const b = el.getBBox(); return {x: b.x, w: b.width}; };
  const client = (el) => { const r = el.getBoundingClientRect(); return {left: r.left, right: r.right}; };
  const axis = svg.querySelector('line.axis');
  const clipEnd = svg.querySelector('line.clip-end');
  const visible = (id) => document.getElementById(id).getClientRects().length > 0;
  return {
    scroll_width: doc.scrollWidth,
    client_width: doc.clientWidth,
    inner_width: window.innerWidth,
    // HTML elements sticking out on the right (SVG contents are clipped to the SVG).
    overflowing: [...document.querySelectorAll('body *')]
      .filter((el) => !(el instanceof SVGElement) || el.tagName === 'svg')
      .filter((el) => el.getBoundingClientRect().right > doc.clientWidth + 0.5)
      .map((el) => el.tagName + (el.id ? '#' + el.id : '')),
    svg: {left: box.left, right: box.right, width: box.width,
          viewbox_width: svg.viewBox.baseVal.width, chart_width: svg.parentElement.clientWidth},
    axis_end_s: Number(svg.dataset.axisEnd),
    axis: {x1: Number(axis.getAttribute('x1')), x2: Number(axis.getAttribute('x2'))},
    bars: [...svg.querySelectorAll('rect.segment')].map((r) => ({...bbox(r), ...client(r)})),
    ticks: [...svg.querySelectorAll('text.tick')].map((t) =>
      ({text: t.textContent, t: Number(t.dataset.t), ...client(t)})),
    unscored: [...svg.querySelectorAll('rect.unscored')].map((r) => ({...bbox(r),
      start_s: Number(r.dataset.startS), end_s: Number(r.dataset.endS)})),
    unscored_labels: [...svg.querySelectorAll('text')].filter((t) => t.textContent === 'not scored').length,
    clip_end_x: clipEnd ? Number(clipEnd.getAttribute('x1')) : null,
    legend_unscored: visible('legend-unscored'),
    legend_end: visible('legend-end'),
    meta: document.getElementById('meta').textContent,
  };
}"""

NICE_STEPS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900]


def _score(page, path: Path, *, expect_ok: bool = True) -> tuple[dict, dict]:
    """Upload ``path`` through the page; returns the service's JSON answer and the page's
    state while the request was held (the real request, continued after the snapshot)."""
    held: list[dict] = []

    def hold(route):
        # The request is paused here: the answer cannot have arrived, whatever the timing.
        held.append(page.evaluate(STATE_JS))
        route.continue_()

    page.route("**/v1/score", hold)
    try:
        page.set_input_files("#file", str(path))
        with page.expect_response("**/v1/score", timeout=SCORE_TIMEOUT_MS) as answer:
            page.click("#submit")
        body = answer.value.json()
        done = "#result:not([hidden])" if expect_ok else "#error:not([hidden])"
        page.wait_for_selector(done, timeout=30_000)
        page.wait_for_function("!document.getElementById('submit').disabled")
    finally:
        page.unroute("**/v1/score", hold)
    assert len(held) == 1
    return body, held[0]


def _check_layout(page, body: dict) -> dict:
    """The page fits its width and the chart draws ``body``'s segments to scale."""
    lay = page.evaluate(LAYOUT_JS)
    # No horizontal overflow, nothing sticking out, the chart's right edge on screen.
    assert lay["scroll_width"] <= lay["client_width"], lay
    assert lay["overflowing"] == [], lay["overflowing"]
    svg = lay["svg"]
    assert svg["left"] >= 0 and svg["right"] <= lay["client_width"] <= lay["inner_width"], svg
    # Drawn 1:1 from the container's width (a fixed 820 px chart would not fit 390 px).
    assert abs(svg["viewbox_width"] - svg["chart_width"]) <= 1, svg
    assert abs(svg["width"] - svg["chart_width"]) <= 1, svg
    # The axis spans max(duration, last segment's end); each bar exactly its segment.
    segs = body["segments"]
    axis_end = max(body["duration_s"], max(s["end_s"] for s in segs))
    assert lay["axis_end_s"] == pytest.approx(axis_end, abs=1e-9)
    x1, x2 = lay["axis"]["x1"], lay["axis"]["x2"]
    assert x2 - x1 > 100

    def x(t: float) -> float:
        return x1 + (x2 - x1) * t / axis_end

    assert len(lay["bars"]) == len(segs)
    for bar, seg in zip(lay["bars"], segs):
        assert bar["x"] == pytest.approx(x(seg["start_s"]), abs=PX), (bar, seg)
        assert bar["x"] + bar["w"] == pytest.approx(x(seg["end_s"]), abs=PX), (bar, seg)
        assert x1 - PX <= bar["x"] and bar["x"] + bar["w"] <= x2 + PX  # within the axis
        assert svg["left"] - PX <= bar["left"] and bar["right"] <= svg["right"] + PX
    # Ticks: at least 3, a nice step, labels inside the chart and not overlapping.
    ticks = lay["ticks"]
    assert 3 <= len(ticks) <= 9, ticks
    times = [t["t"] for t in ticks]
    step = times[1] - times[0]
    assert min(abs(step - s) for s in NICE_STEPS) < 1e-9, times
    assert times[0] == 0 and times[-1] <= axis_end + 1e-9 < times[-1] + step
    for a, b in zip(ticks, ticks[1:]):
        assert b["t"] - a["t"] == pytest.approx(step) and a["right"] <= b["left"], (a, b)
    assert all(svg["left"] - PX <= t["left"] and t["right"] <= svg["right"] + PX for t in ticks)
    if "decoder" in body:
        assert body["decoder"] in lay["meta"]
    return lay


def _screenshot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


@pytest.mark.parametrize("width", [390, 1280])
def test_page_fits_the_screen_and_draws_the_timeline_to_scale(
    service, browser, clips, width, tmp_path
):
    context = browser.new_context(viewport={"width": width, "height": 900})
    try:
        page = context.new_page()
        responses: list[tuple[int, str]] = []
        page.on("response", lambda r: responses.append((r.status, r.url)))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        page.goto(f"{service['url']}/")
        page.wait_for_function("document.getElementById('model').textContent.includes(' v')")
        # The favicon is inline: no request of the page load answered 404.
        assert page.get_attribute("link[rel=icon]", "href").startswith("data:image/svg+xml,")
        assert [r for r in responses if r[0] == 404] == [], responses
        # The test model's backbones are random: the page says so.
        note = page.locator("#random-note")
        note.wait_for(state="visible")
        text = note.inner_text()
        assert "randomly initialised" in text and "not meaningful" in text, text
        assert "random:" in text

        # A 3 s clip: three 1 s segments, nothing unscored, nothing past the end.
        body, during = _score(page, clips["bench"])
        assert during["hidden"] and not during["displayed"]
        assert len(body["segments"]) == 3
        lay = _check_layout(page, body)
        assert page.locator("tr.prob").count() == len(body["probabilities"])
        assert page.inner_text("#label") == body["label"]
        assert lay["unscored"] == [] and lay["clip_end_x"] is None
        assert not lay["legend_unscored"] and not lay["legend_end"]
        _screenshot(page, tmp_path, f"{width}px-3s")

        # 2.38 s: two segments; the previous result is gone while this one is scored.
        body, during = _score(page, clips["tail"])
        assert during["hidden"] and not during["displayed"], during
        assert during["label"] == "" and during["bars"] == 0 and during["probs"] == 0, during
        assert during["submit_disabled"] and "scoring" in during["status"], during
        segs = body["segments"]
        last_end = segs[-1]["end_s"]
        assert body["duration_s"] - last_end > 0.3, body  # the grid leaves a tail unscored
        lay = _check_layout(page, body)
        (band,) = lay["unscored"]
        assert band["start_s"] == pytest.approx(last_end)
        assert band["end_s"] == pytest.approx(body["duration_s"])
        x1, x2, end = lay["axis"]["x1"], lay["axis"]["x2"], lay["axis_end_s"]
        assert band["x"] == pytest.approx(x1 + (x2 - x1) * last_end / end, abs=PX)
        assert band["x"] + band["w"] == pytest.approx(x2, abs=PX)  # the axis ends at the clip's end
        assert lay["unscored_labels"] == 1 and lay["legend_unscored"]
        assert lay["clip_end_x"] is None
        _screenshot(page, tmp_path, f"{width}px-2.38s")

        # 0.1 s: one segment longer than the clip; the axis runs to its end, the clip's end
        # is marked, the bar stays within the axis.
        body, during = _score(page, clips["short"])
        assert during["hidden"] and during["bars"] == 0, during
        (seg,) = body["segments"]
        assert seg["end_s"] > body["duration_s"]
        lay = _check_layout(page, body)
        x1, x2, end = lay["axis"]["x1"], lay["axis"]["x2"], lay["axis_end_s"]
        assert end == pytest.approx(seg["end_s"])
        assert lay["clip_end_x"] == pytest.approx(x1 + (x2 - x1) * body["duration_s"] / end, abs=PX)
        assert lay["legend_end"] and lay["unscored"] == []
        _screenshot(page, tmp_path, f"{width}px-0.1s")

        if width > 390:
            # Narrowing the window redraws the chart to the new width.
            page.set_viewport_size({"width": 390, "height": 900})
            page.wait_for_function(
                "document.getElementById('timeline').viewBox.baseVal.width"
                " === Math.floor(document.getElementById('chart').clientWidth)"
            )
            _check_layout(page, body)

        # Not a video: the service's error, the old result hidden.
        body, during = _score(page, clips["bad"], expect_ok=False)
        assert during["hidden"], during
        assert page.inner_text("#error").startswith("415")
        assert not page.locator("#result").is_visible()
        assert errors == [], errors
    finally:
        context.close()
