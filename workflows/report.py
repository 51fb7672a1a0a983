"""The batch job's HTML report: one self-contained page an analyst opens from disk.

``write_report(clips, events, path, title=..., threshold=...)`` writes one HTML file (inline
CSS and JavaScript, no network, works from ``file://``) with a section per clip: its file,
label, top classes, duration, audio, and an SVG timeline of the anomaly score with the
threshold and the events shaded. The clips are sortable by peak score, name or duration.
The data sits in the page as JSON (``<script type="application/json" id="data">``), so
what is shown can also be read back from it.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avarnet.scoring import Event

__all__ = ["write_report"]


def _num(x: Any) -> float | None:
    """A finite float, or None (JSON has no NaN; the page shows "n/a")."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _seq(x: Any) -> list[Any]:
    """A list of ``x``: None -> [], also from a numpy array (no truth value)."""
    return [] if x is None else list(x)


def _clip_data(clip: dict[str, Any], events: list[Event]) -> dict[str, Any]:
    path = str(clip.get("path", ""))
    # A dict, or key-value pairs (a Parquet map read back).
    probs = {str(k): _num(v) for k, v in dict(clip.get("probabilities") or {}).items()}
    top = sorted(probs.items(), key=lambda kv: -(kv[1] if kv[1] is not None else -1.0))[:3]
    segments = [
        {
            "start_s": _num(s["start_s"]),
            "end_s": _num(s["end_s"]),
            "anomaly_score": _num(s["anomaly_score"]),
            "top_class": str(s.get("top_class", "")),
        }
        for s in _seq(clip.get("segments"))
    ]
    scores = [s["anomaly_score"] for s in segments if s["anomaly_score"] is not None]
    return {
        "video_id": str(clip.get("video_id", "")),
        "path": path,
        "name": os.path.basename(path) or str(clip.get("video_id", "")),
        "label": str(clip.get("label", "")),
        "top": top,
        "duration_s": _num(clip.get("duration_s")),
        "has_audio": bool(clip.get("has_audio")),
        "peak": max(scores) if scores else None,
        "segments": segments,
        "events": [
            {
                "start_s": _num(e.start_s),
                "end_s": _num(e.end_s),
                "peak_score": _num(e.peak_score),
                "peak_s": _num(e.peak_s),
                "top_class": str(e.top_class),
            }
            for e in events
        ],
    }


def _models(clips: Sequence[dict[str, Any]]) -> str:
    seen = []
    for c in clips:
        m = c.get("model") or {}
        version = str(m.get("version", "?"))
        name = f"{m.get('name', '?')} {'v' if version.isdigit() else ''}{version}"
        if m and name not in seen:
            seen.append(name)
    return ", ".join(seen) or "unknown"


def write_report(
    clips: Sequence[dict[str, Any]],
    events: Sequence[Event],
    path: str | os.PathLike,
    *,
    title: str,
    threshold: float,
) -> Path:
    """Write the HTML report of a batch run, atomically.

    Args:
        clips: one scored clip each: the scoring service's answer (``label``,
            ``probabilities``, ``segments``, ``has_audio``, ``duration_s``, ``model``, ...)
            plus ``video_id`` and ``path``.
        events: the events of all clips (:func:`avarnet.scoring.find_events`); each is
            shown on the clip with the same ``video_id`` and ``path``.
        path: the HTML file to write.
        title: the page's title.
        threshold: the event threshold, drawn as a dashed line on every timeline.

    Returns:
        The report's path.
    """
    by_clip: dict[tuple[str, str], list[Event]] = {}
    for e in events:
        by_clip.setdefault((e.video_id, e.path), []).append(e)
    data = {
        "title": str(title),
        "threshold": float(threshold),
        "clips": [
            _clip_data(c, by_clip.get((str(c.get("video_id", "")), str(c.get("path", ""))), []))
            for c in clips
        ],
    }
    # "<" never occurs outside a JSON string, so \u003c keeps the JSON valid and no value
    # can close the script element ("</script>") or open a comment ("<!--").
    blob = json.dumps(data, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    header = (
        f"model {_models(clips)} · {len(clips)} clips · {len(events)} events · "
        f"threshold {float(threshold):.2f}"
    )
    subs = {"TITLE": html.escape(str(title)), "HEADER": html.escape(header), "DATA": blob}
    page = re.sub(r"@(TITLE|HEADER|DATA)@", lambda m: subs[m[1]], _PAGE)  # one pass
    out = Path(os.path.abspath(os.fspath(path)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return out


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<link rel="icon" href="data:,">
<style>
  *, *::before, *::after { box-sizing: border-box; }
  body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5rem auto; max-width: 1100px; padding: 0 1rem; color: #222; overflow-wrap: anywhere; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  h2 { font-size: 1.05rem; margin: 0 0 .2rem; }
  .muted { color: #666; font-size: .9rem; }
  .controls { margin: 1rem 0; }
  select { max-width: 100%; }
  section.clip { border: 1px solid #ddd; border-radius: 8px; padding: .8rem 1rem; margin: 1rem 0; }
  .label { font-weight: 600; }
  .top { display: flex; flex-wrap: wrap; gap: .2rem 1rem; margin: .3rem 0; font-variant-numeric: tabular-nums; }
  .chart { width: 100%; }
  svg.timeline { display: block; width: 100%; height: auto; }
  svg text { font-size: 11px; fill: #444; }
</style>
</head>
<body>
<h1 id="title">@TITLE@</h1>
<div class="muted" id="summary">@HEADER@</div>
<div class="controls"><label>Sort clips by
  <select id="sort">
    <option value="peak" selected>peak anomaly score (highest first)</option>
    <option value="name">name (A to Z)</option>
    <option value="duration">duration (longest first)</option>
  </select></label></div>
<main id="clips"></main>
<script type="application/json" id="data">@DATA@</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const NS = "http://www.w3.org/2000/svg";
const fmt = (v, d) => (v === null || v === undefined ? "n/a" : v.toFixed(d));
const STEPS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];

function tickStep(span, maxTicks) {
  for (const s of STEPS) if (Math.floor(span / s + 1e-9) + 1 <= maxTicks) return s;
  let s = STEPS[STEPS.length - 1];
  while (Math.floor(span / s + 1e-9) + 1 > maxTicks) s *= 2;
  return s;
}

function fmtTime(t, step) {
  if (step < 60) return `${t.toFixed(step >= 1 ? 0 : 1)} s`;
  const r = Math.round(t), m = Math.floor(r / 60), s = String(r - 60 * m).padStart(2, "0");
  return m >= 60 ? `${Math.floor(m / 60)}:${String(m % 60).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function el(tag, attrs, text, parent) {
  const node = tag.startsWith("svg:") ? document.createElementNS(NS, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function drawTimeline(svg, clip, width) {
  const W = Math.max(200, Math.floor(width)), H = 150, L = 30, R = 12, T = 10, B = 28;
  const ends = clip.segments.map((s) => s.end_s || 0);
  const end = Math.max(clip.duration_s || 0, ...ends, 1e-6);
  const x = (t) => L + (W - L - R) * (t / end);
  const y = (v) => T + (H - T - B) * (1 - Math.min(1, Math.max(0, v || 0)));
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const add = (tag, attrs, text) => el("svg:" + tag, attrs, text, svg);
  for (const ev of clip.events) {
    const band = add("rect", { class: "event", x: x(ev.start_s), y: T, height: y(0) - T,
      width: Math.max(1, x(ev.end_s) - x(ev.start_s)), fill: "#f5c6c0" });
    el("svg:title", {}, `event ${fmt(ev.start_s, 2)}–${fmt(ev.end_s, 2)} s: ` +
      `peak ${fmt(ev.peak_score, 3)} (${ev.top_class}) at ${fmt(ev.peak_s, 2)} s`, band);
  }
  for (const v of [0, 1]) {
    add("line", { x1: L, x2: x(end), y1: y(v), y2: y(v), stroke: "#ddd" });
    add("text", { x: 2, y: y(v) + 4 }, v.toFixed(1));
  }
  for (const s of clip.segments) {
    const over = s.anomaly_score !== null && s.anomaly_score >= DATA.threshold;
    const w = Math.max(0, x(s.end_s) - x(s.start_s));  // a white edge only where it shows
    const bar = add("rect", { class: "segment", x: x(s.start_s), y: y(s.anomaly_score),
      width: w, height: y(0) - y(s.anomaly_score), fill: over ? "#c0392b" : "#2b5c8a",
      stroke: w >= 4 ? "#fff" : "none", "stroke-width": 0.5 });
    el("svg:title", {}, `${fmt(s.start_s, 2)}–${fmt(s.end_s, 2)} s: ` +
      `${fmt(s.anomaly_score, 3)} (${s.top_class})`, bar);
  }
  add("line", { class: "threshold", x1: L, x2: x(end), y1: y(DATA.threshold),
    y2: y(DATA.threshold), stroke: "#333", "stroke-dasharray": "5 4" });
  add("text", { x: 2, y: y(DATA.threshold) + 4 }, DATA.threshold.toFixed(2));
  add("line", { x1: x(0), x2: x(end), y1: y(0), y2: y(0), stroke: "#888" });
  const step = tickStep(end, Math.min(10, Math.max(4, Math.floor((W - L - R) / 60))));
  for (let i = 0; i <= Math.floor(end / step + 1e-9); i++) {
    const t = i * step, tx = x(t);
    const anchor = tx > W - R - 20 ? "end" : i === 0 ? "start" : "middle";
    add("line", { x1: tx, x2: tx, y1: y(0), y2: y(0) + 4, stroke: "#888" });
    add("text", { class: "tick", x: anchor === "end" ? Math.min(tx + 4, W - 1) : tx,
      y: H - 8, "text-anchor": anchor }, fmtTime(t, step));
  }
}

function render(clip) {
  const sec = el("section", { class: "clip", "data-video-id": clip.video_id });
  el("h2", { class: "name" }, clip.name, sec);
  el("div", { class: "muted path" }, clip.path, sec);
  const head = el("div", {}, "label: ", sec);
  el("span", { class: "label" }, clip.label, head);
  const d = clip.duration_s;
  el("span", { class: "muted" }, ` · ${fmt(d, 2)} s${d >= 60 ? ` (${fmtTime(d, 60)})` : ""} · ` +
    (clip.has_audio ? "audio" : "no audio track") + ` · peak ${fmt(clip.peak, 3)} · ` +
    `${clip.events.length} event${clip.events.length === 1 ? "" : "s"}`, head);
  const top = el("div", { class: "top" }, undefined, sec);
  for (const [name, p] of clip.top) el("span", { class: "prob" }, `${name} ${fmt(p, 3)}`, top);
  const chart = el("div", { class: "chart" }, undefined, sec);
  const svg = el("svg:svg", { class: "timeline", role: "img", viewBox: "0 0 800 150",
    "aria-label": `anomaly score over time of ${clip.name}` }, undefined, chart);
  sec.draw = () => drawTimeline(svg, clip, chart.clientWidth || 800);
  new ResizeObserver(() => {
    if (Math.floor(chart.clientWidth) !== svg.viewBox.baseVal.width) sec.draw();
  }).observe(chart);
  return sec;
}

const ORDER = {
  peak: (a, b) => (b.peak ?? -1) - (a.peak ?? -1) || a.name.localeCompare(b.name),
  name: (a, b) => a.name.localeCompare(b.name) || a.path.localeCompare(b.path),
  duration: (a, b) => (b.duration_s ?? -1) - (a.duration_s ?? -1) || a.name.localeCompare(b.name),
};
const main = document.getElementById("clips");
const sections = DATA.clips.map((clip) => [clip, render(clip)]);
function sortClips(key) {
  for (const [, sec] of [...sections].sort((a, b) => ORDER[key](a[0], b[0]))) main.appendChild(sec);
}
const select = document.getElementById("sort");
select.addEventListener("change", () => sortClips(select.value));
sortClips(select.value);
for (const [, sec] of sections) sec.draw();
if (!sections.length) el("p", { class: "muted" }, "no clips", main);
</script>
</body>
</html>
"""
