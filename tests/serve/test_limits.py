"""Bounded work per request, over real HTTP against a real deployment: long clips refused
from their header or encoded beside the short ones' batches, uploads streamed to disk (the
Ingress's memory measured), stalled and abandoned uploads cut, nothing left behind."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from avarnet.data.decode import read_header
from workflows.local_cluster import free_ports

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg"),
]

MAX_CLIP_S = 900  # this deployment's serve.max_clip_seconds
LONG_CLIP_S = 10  # clips over this are encoded outside the batches
# upload_idle_timeout_s. Not shorter: four concurrent 180 MB uploads on two busy cores
# reached the Ingress with gaps of up to 8.3 s between chunks while the client sent
# without a pause (Serve's proxy forwarding them); at 3 s they were cut with 408.
IDLE_S = 15


def _ffmpeg_clip(path: Path, seconds: float, size: str = "64x64", rate: int = 1) -> Path:
    """A low-resolution clip with audio, as cheap to write as footage gets."""
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    cmd += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}"]
    cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000", "-t", str(seconds)]
    subprocess.run(
        # ffmpeg's fast AAC coder: its default took ~10 CPU-s for ten minutes of audio
        [*cmd, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-aac_coder", "fast"]
        + [str(path)],
        check=True,
    )
    assert path.stat().st_size > 0
    return path


def _joined_clip(path: Path, piece: Path, times: int) -> Path:
    """``piece`` ``times`` over in one file, copied, not encoded again (ffmpeg's concat
    demuxer: a 2 h clip in under a second instead of two minutes of x264 and AAC)."""
    listing = path.with_suffix(".txt")
    listing.write_text(f"file '{piece}'\n" * times)
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "concat"]
    cmd += ["-safe", "0", "-i", str(listing), "-c", "copy", str(path)]
    subprocess.run(cmd, check=True)
    assert path.stat().st_size > 0
    return path


@pytest.fixture(scope="module")
def bounded(ray_session, registered_model, tmp_path_factory):
    """The service with the limits under test; one Encoder replica, so that a long clip
    and the short ones share it. Deployed as an operator does (README): serve/config.yaml
    with this test's store, limits and port, through `serve deploy --address`."""
    from serve.deploy import shutdown, wait_healthy

    args = {
        "model": "models:/avarnet@champion",
        "tracking_uri": registered_model["tracking_uri"],
        "max_upload_mb": 200.0,
        "max_clip_seconds": MAX_CLIP_S,
        "max_segments": 0,
        "long_clip_seconds": LONG_CLIP_S,
        "upload_idle_timeout_s": IDLE_S,
        "encoder_cpus": 0.5,
        "classifier_cpus": 0.1,
        "encoder_max_replicas": 1,
    }
    # Its own upload folder: the leftover checks see this service's files only, not those
    # of another service on the machine.
    uploads = tmp_path_factory.mktemp("uploads")
    args["upload_dir"] = str(uploads)
    # Serve keeps the port it started with: the shared service (tests/serve/conftest.py),
    # whose tests have all run by now, goes first.
    shutdown()
    url = _serve_deploy_config(ray_session, args, free_ports(1)[0], uploads.parent)
    assert wait_healthy(url, 240)["model"]["uri"] == "models:/avarnet@champion"
    root = tmp_path_factory.mktemp("clips")
    clips = {
        "short": _ffmpeg_clip(root / "short.mp4", 4, size="96x64", rate=10),
        "ten_minutes": _ffmpeg_clip(root / "ten_minutes.mp4", 600),
    }
    clips["two_hours"] = _joined_clip(root / "two_hours.mp4", clips["ten_minutes"], 12)
    yield {"url": url, "clips": clips, "uploads": uploads}
    shutdown()


def _serve_deploy_config(ray, args: dict, port: int, folder: Path) -> str:
    """serve/config.yaml, its app's args updated with ``args`` and its HTTP port set to
    ``port``, deployed with Serve's CLI on this session's Ray; the service's URL."""
    import yaml

    cfg = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    cfg["logging_config"]["log_level"] = "WARNING"  # no access-log line per request here
    (app,) = cfg["applications"]
    unknown = set(args) - set(app["args"]) - {"tracking_uri", "upload_dir"}
    assert not unknown, f"serve/config.yaml does not show {sorted(unknown)}"
    app["args"].update(args)
    config = folder / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg))
    dashboard = ray._private.worker.global_worker.node.webui_url
    res = subprocess.run(
        [str(Path(sys.executable).parent / "serve"), "deploy", str(config)]
        + ["--address", f"http://{dashboard}"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    # `serve deploy` returns once the config is submitted; wait, as serve.run does, until
    # every deployment of the application is running (the Ingress answers health sooner).
    from ray import serve

    deadline = time.monotonic() + 240
    while (app := serve.status().applications.get("avarnet")) is None or app.status != "RUNNING":
        assert time.monotonic() < deadline, f"the application is not running after 240 s: {app}"
        time.sleep(0.5)
    return f"http://127.0.0.1:{port}"


def _score(url: str, path: Path, timeout: float = 300) -> tuple[int, dict, float]:
    t0 = time.perf_counter()
    with path.open("rb") as f:
        r = requests.post(f"{url}/v1/score", files={"file": (path.name, f)}, timeout=timeout)
    return r.status_code, r.json(), time.perf_counter() - t0


def _replica_pid(name: str) -> int:
    import ray
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("state", "=", "ALIVE")],
        limit=1000,
    )
    (pid,) = [a.pid for a in actors if name in (a.class_name or "") and a.pid]
    return pid


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (``RssAnon``: its own heap, without the object
    store's shared pages that it maps)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


class _Sampler:
    """The peak resident memory of a process while a block runs (sampled every 20 ms)."""

    def __init__(self, pid: int, field: str = "VmRSS"):
        self.pid, self.field, self.peak, self._stop = pid, field, 0.0, threading.Event()

    def __enter__(self):
        self.baseline = _rss_mb(self.pid, self.field)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb(self.pid, self.field))
            self._stop.wait(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb(self.pid, self.field))


def _leftovers(bounded) -> list[str]:
    """The upload files of the service under test (its own ``upload_dir``)."""
    return glob.glob(os.path.join(bounded["uploads"], "avarnet-upload-*"))


def test_a_two_hour_clip_is_refused_from_its_header_and_stalls_nothing(bounded):
    url, clips = bounded["url"], bounded["clips"]
    status, _, alone = _score(url, clips["short"])  # warm
    assert status == 200
    _, _, alone = _score(url, clips["short"])
    encoder = _replica_pid("Encoder")
    with _Sampler(encoder) as mem, ThreadPoolExecutor(2) as pool:
        long = pool.submit(_score, url, clips["two_hours"])
        short = pool.submit(_score, url, clips["short"])
        (l_status, l_body, l_s), (s_status, _, s_s) = long.result(), short.result()
    print(f"2 h clip: {l_status} in {l_s:.2f} s; 4 s clip: {s_s:.2f} s (alone {alone:.2f} s)")
    print(f"Encoder RSS {mem.baseline:.0f} MB -> peak {mem.peak:.0f} MB")
    assert l_status == 413 and l_body["error"]["type"] == "payload_too_large"
    message = l_body["error"]["message"]
    length = read_header(clips["two_hours"]).duration_s  # 7200 s (+ an AAC frame or so)
    assert length == pytest.approx(7200, abs=1)
    assert f"{length:.1f} s long" in message and "serve.max_clip_seconds" in message
    assert "batch" in message
    assert l_s < 5.0  # refused from the container header, nothing decoded
    assert s_status == 200 and s_s < 2 * alone + 3.0
    assert mem.peak - mem.baseline < 100  # the Encoder never saw the long clip


def test_a_long_clip_is_scored_beside_short_ones_and_memory_comes_back(bounded):
    """A 10-minute clip (within the limit, over long_clip_seconds) runs outside the
    batches on the only Encoder replica; short clips sent meanwhile are not queued behind
    it. Afterwards the replica's memory is back near where it started."""
    url, clips = bounded["url"], bounded["clips"]
    _, _, alone = _score(url, clips["short"])
    encoder = _replica_pid("Encoder")
    before = _rss_mb(encoder)
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(_score, url, clips["ten_minutes"])
        shorts: list[tuple[int, float, bool]] = []
        while not long.done():
            status, _, seconds = _score(url, clips["short"])
            shorts.append((status, seconds, not long.done()))
        l_status, l_body, l_s = long.result()
    after = _rss_mb(encoder)
    during = [s for _, s, in_flight in shorts if in_flight]
    print(f"10 min clip: {l_status} in {l_s:.1f} s; 4 s clips while it ran: {len(during)}, ")
    print(f"  latencies {[round(s, 2) for s in during]} (alone {alone:.2f} s)")
    print(f"Encoder RSS before {before:.0f} MB, after {after:.0f} MB")
    assert l_status == 200 and len(l_body["segments"]) == 600
    assert l_body["duration_s"] == pytest.approx(600, abs=1)
    assert during, "no short clip finished while the long one was being scored"
    assert all(status == 200 for status, _, _ in shorts)
    assert max(during) < 2 * alone + 3.0 < l_s
    assert after - before < 100
    assert not _leftovers(bounded)


def test_big_uploads_go_to_disk_and_never_reach_the_encoder(bounded, tmp_path):
    """Four concurrent 180 MB uploads of random bytes (two raw bodies, two multipart):
    each is streamed to a file and refused from its header (415) in the Ingress; the
    Encoder never sees them. The Ingress holds at most one copy of what is in flight:
    Ray Serve's own receive queue, which its proxy fills as fast as the client sends."""
    url = bounded["url"]
    blob = tmp_path / "random.bin"
    with blob.open("wb") as f:
        for _ in range(180):
            f.write(os.urandom(1 << 20))

    def raw() -> int:
        with blob.open("rb") as f:
            return requests.post(f"{url}/v1/score", data=f, timeout=600).status_code

    def multipart() -> int:
        with blob.open("rb") as f:
            files = {"file": ("random.mp4", f)}
            return requests.post(f"{url}/v1/score", files=files, timeout=600).status_code

    ingress, encoder = _replica_pid("Ingress"), _replica_pid("Encoder")
    spooled: set[str] = set()  # the upload files seen in the service's upload_dir
    t0 = time.perf_counter()
    with (
        _Sampler(ingress, "RssAnon") as anon,
        _Sampler(ingress) as rss,
        _Sampler(encoder) as enc,
        ThreadPoolExecutor(4) as pool,
    ):
        uploads = [pool.submit(fn) for fn in (raw, raw, multipart, multipart)]
        while not all(f.done() for f in uploads):
            spooled.update(_leftovers(bounded))
            time.sleep(0.05)
        statuses = [f.result() for f in uploads]
    print(
        f"4 x 180 MB in {time.perf_counter() - t0:.1f} s: {statuses}; Ingress heap "
        f"(RssAnon) {anon.baseline:.0f} -> {anon.peak:.0f} MB (+{anon.peak - anon.baseline:.0f}), "
        f"RSS {rss.baseline:.0f} -> {rss.peak:.0f} MB (+{rss.peak - rss.baseline:.0f}); "
        f"Encoder +{enc.peak - enc.baseline:.0f} MB"
    )
    assert statuses == [415] * 4
    assert len(spooled) >= 2, spooled  # streamed to files in upload_dir, then removed
    assert enc.peak - enc.baseline < 50
    assert anon.peak - anon.baseline < 4 * 180 + 100
    assert not _leftovers(bounded)


def _raw_request(url: str, declared: int, body: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def test_a_stalled_upload_is_cut_and_an_abandoned_one_leaves_nothing(bounded):
    url = bounded["url"]
    # Declares 1,000,000 bytes, sends 1,000, then nothing: cut after IDLE_S with 408.
    t0 = time.perf_counter()
    with _raw_request(url, 1_000_000, b"\0" * 1000) as sock:
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    waited = time.perf_counter() - t0
    print(f"stalled upload answered after {waited:.1f} s: {answer.splitlines()[0]!r}")
    assert answer.startswith(b"HTTP/1.1 408")
    assert IDLE_S <= waited < IDLE_S + 10
    # A client that goes away halfway: the service stays healthy and keeps no file.
    with _raw_request(url, 1_000_000, b"\0" * 500_000):
        pass
    deadline = time.monotonic() + 30
    while _leftovers(bounded) and time.monotonic() < deadline:  # the replica notices the EOF
        time.sleep(0.2)
    assert not _leftovers(bounded)
    assert requests.get(f"{url}/v1/health", timeout=30).status_code == 200


def test_a_piped_webm_of_unknown_length_is_scored_by_pyav(bounded, tmp_path):
    """No duration in its header: measured by the Encoder (the long lane) and read by
    PyAV; the answer says which decoder read it."""
    path = tmp_path / "piped.webm"
    with path.open("wb") as f:
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi"]
            + ["-i", "testsrc2=size=96x64:rate=10:duration=3", "-f", "lavfi"]
            + ["-i", "sine=frequency=440:sample_rate=48000:duration=3"]
            + ["-c:v", "libvpx", "-c:a", "libvorbis", "-f", "webm", "pipe:1"],
            stdout=f,
            check=True,
        )
    status, body, _ = _score(bounded["url"], path)
    assert status == 200, body
    assert body["decoder"] == "pyav" and body["has_audio"] and len(body["segments"]) == 3
    status, body, _ = _score(bounded["url"], bounded["clips"]["short"])
    assert status == 200 and body["decoder"] == "decord"
