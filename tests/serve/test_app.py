"""The scoring service over real HTTP: Ray Serve on the session's Ray, a model from a
real MLflow registry, real MP4 uploads."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.integration


def _clip(bench_rows, *, audio: bool) -> Path:
    from avarnet.data.decode import probe

    for row in bench_rows:
        if probe(row["path"]).has_audio == audio:
            return Path(row["path"])
    raise AssertionError(f"no benchmark clip with has_audio={audio}")


@pytest.fixture(scope="module")
def openapi(service) -> dict:
    r = requests.get(f"{service['url']}/openapi.json", timeout=30)
    assert r.status_code == 200
    return r.json()


def _validate(body: dict, openapi: dict, schema: str) -> None:
    """Check ``body`` against a component schema of the service's own OpenAPI document."""
    import jsonschema

    # The component's $refs ("#/components/schemas/...") resolve against this document.
    document = {**openapi["components"]["schemas"][schema], "components": openapi["components"]}
    jsonschema.validate(body, document)


def _in_process(service, path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """The same clip through the library: encoders built from the model's spec + Predictor."""
    from avarnet.features.backbones import build_encoders
    from avarnet.predictor import Predictor

    predictor = Predictor.from_dir(service["artifact"])
    feats = build_encoders(predictor.spec).encode_clip(path)
    (pred,) = predictor.predict([feats.audio], [feats.visual], [feats.has_audio])
    return pred.label, pred.probabilities, pred.segment_scores


def test_health_model_and_schema(service, openapi):
    url = service["url"]
    health = requests.get(f"{url}/v1/health", timeout=30).json()
    assert health["status"] == "ok"
    version = service["model_uri"].rsplit("/", 1)[1]
    # The alias was pinned to the concrete version at deployment.
    assert health["model"] == {
        "name": "avarnet",
        "version": version,
        "uri": "models:/avarnet@champion",
    }
    info = requests.get(f"{url}/v1/model", timeout=30).json()
    _validate(info, openapi, "ModelInfo")
    assert len(info["classes"]) == 10 and info["normal_class"] == "Normal"
    assert info["feature_spec"]["audio_backbone"].startswith("random:")
    assert {"/v1/score", "/v1/health", "/v1/model"} <= set(openapi["paths"])
    assert {"400", "413", "415", "422"} <= set(openapi["paths"]["/v1/score"]["post"]["responses"])
    page = requests.get(f"{url}/", timeout=30)
    assert page.status_code == 200 and "v1/score" in page.text


def test_a_deploy_at_another_port_is_refused_naming_the_running_one(service):
    """Serve keeps the address it started with: a second deploy at another port is refused
    at once, saying where the service is, and the running one is left as it was."""
    from glue.errors import CliError
    from serve.deploy import deploy
    from workflows.local_cluster import free_ports

    port = int(service["url"].rsplit(":", 1)[1])
    args = {"model": "models:/avarnet@champion", "tracking_uri": service["tracking_uri"]}
    with pytest.raises(CliError, match=rf"already running on this cluster at 127\.0\.0\.1:{port}"):
        deploy(args, port=free_ports(1)[0], timeout_s=5)
    assert requests.get(f"{service['url']}/v1/health", timeout=30).status_code == 200


def test_avarnet_serve_at_another_port_exits_2_and_leaves_the_running_service(service, tmp_path):
    """`avarnet serve` joining a cluster whose Serve runs at another port: one line, exit
    2, and the running service is not shut down on the way out."""
    import os
    import subprocess
    import sys

    import ray

    from workflows.local_cluster import free_ports

    port = int(service["url"].rsplit(":", 1)[1])
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    res = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "serve", "--port", str(free_ports(1)[0])]
        + [f"output_dir={tmp_path}", "--tracking-uri", service["tracking_uri"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("avarnet:")]
    assert lines and f"already running on this cluster at 127.0.0.1:{port}" in lines[-1], lines
    assert "Traceback" not in res.stderr
    assert requests.get(f"{service['url']}/v1/health", timeout=30).status_code == 200


def test_scores_a_clip_as_the_library_does(service, openapi, bench_rows):
    path = _clip(bench_rows, audio=True)
    with path.open("rb") as f:
        r = requests.post(f"{service['url']}/v1/score", files={"file": (path.name, f)}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    _validate(body, openapi, "ScoreResponse")
    assert body["has_audio"] is True
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    segs = body["segments"]
    assert segs[0]["start_s"] == 0 and len(segs) == 3  # 3 s clip, 1 s segments
    assert all(a["end_s"] == pytest.approx(b["start_s"]) for a, b in zip(segs, segs[1:]))
    # Served features are the training features: same probabilities as the library path.
    label, probs, scores = _in_process(service, path)
    assert body["label"] == label
    served = np.array([body["probabilities"][c] for c in sorted(body["probabilities"])])
    np.testing.assert_allclose(served, probs, atol=1e-5)
    np.testing.assert_allclose([s["anomaly_score"] for s in segs], scores, atol=1e-5)


def test_raw_body_clip_without_audio_is_scored(service, openapi, bench_rows):
    path = _clip(bench_rows, audio=False)
    r = requests.post(
        f"{service['url']}/v1/score",
        data=path.read_bytes(),
        headers={"Content-Type": "video/mp4"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    _validate(body, openapi, "ScoreResponse")
    assert body["has_audio"] is False and len(body["segments"]) >= 1


def _error(r: requests.Response, status: int, openapi: dict) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    _validate(body, openapi, "ErrorResponse")
    assert body["error"]["status"] == status
    return body["error"]["message"]


def test_bad_uploads_get_json_errors_never_500(service, openapi, bench_rows, tmp_path):
    url = f"{service['url']}/v1/score"
    good = Path(bench_rows[0]["path"]).read_bytes()
    # Empty body, and a multipart form without the `file` field: 400.
    _error(requests.post(url, data=b"", timeout=60), 400, openapi)
    _error(requests.post(url, files={"other": ("x.mp4", good)}, timeout=60), 400, openapi)
    _error(requests.post(url, files={"file": ("x.mp4", b"")}, timeout=60), 400, openapi)
    # A text file: not a video.
    text = b"just some text, not a video\n" * 20
    _error(requests.post(url, files={"file": ("notes.txt", text)}, timeout=60), 415, openapi)
    # A truncated MP4 (the index is at the end, so nothing can be read).
    msg = _error(requests.post(url, data=good[: len(good) // 2], timeout=60), 415, openapi)
    assert "/tmp" not in msg and ".upload" not in msg  # no server paths in messages
    # A path that exists on the server is just bytes to the service: never opened.
    _error(requests.post(url, data=str(bench_rows[0]["path"]).encode(), timeout=60), 415, openapi)
    # Over the limit (1 MB here): with a Content-Length, and chunked without one.
    big = b"\0" * (1024 * 1024 + 1)
    _error(requests.post(url, data=big, timeout=60), 413, openapi)
    chunks = (b"\0" * 65536 for _ in range(20))
    _error(requests.post(url, data=chunks, timeout=60), 413, openapi)
    # A garbage Content-Length header.
    r = requests.post(url, data=b"x", headers={"Content-Length": "abc"}, timeout=60)
    assert 400 <= r.status_code < 500
    # Still healthy afterwards.
    assert requests.get(f"{service['url']}/v1/health", timeout=30).status_code == 200


def test_concurrent_requests_all_succeed(service, bench_rows):
    paths = [Path(r["path"]) for r in bench_rows[:8]]

    def score(path: Path) -> dict:
        with path.open("rb") as f:
            r = requests.post(
                f"{service['url']}/v1/score", files={"file": (path.name, f)}, timeout=300
            )
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(score, paths))
    alone = [score(p) for p in paths[:3]]
    for a, b in zip(together, alone):  # batching does not change a clip's answer
        assert a["label"] == b["label"]
        np.testing.assert_allclose(
            [s["anomaly_score"] for s in a["segments"]],
            [s["anomaly_score"] for s in b["segments"]],
            atol=1e-5,
        )
    assert max(r["timings_ms"]["encoder_batch_size"] for r in together) >= 2  # batched


def test_score_cli_against_the_service(service, bench_rows):
    import subprocess
    import sys

    path = _clip(bench_rows, audio=True)
    cmd = [sys.executable, "-m", "workflows.cli", "score", str(path), "--url", service["url"]]
    res = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert body["model"]["name"] == "avarnet" and len(body["segments"]) == 3
    human = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert human.returncode == 0 and f"label: {body['label']}" in human.stdout
    # A bad file: one line on stderr, exit status 2.
    bad = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "score", __file__, "--url", service["url"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "HTTP 415" in bad.stderr and "Traceback" not in bad.stderr


def test_web_page_uploads_a_clip_and_shows_the_result(service, bench_rows, tmp_path, chromium):
    """Headless Chromium (Debian's package, installed by `make test`) drives the page."""

    from playwright.sync_api import sync_playwright

    path = _clip(bench_rows, audio=True)
    with sync_playwright() as pw:
        browser = chromium(pw)
        try:
            page = browser.new_page()
            page.goto(f"{service['url']}/")
            page.wait_for_function("document.getElementById('model').textContent.includes(' v')")
            page.set_input_files("#file", str(path))
            page.click("#submit")
            page.wait_for_selector("#result:not([hidden])", timeout=120_000)
            label = page.inner_text("#label")
            rows = page.locator("tr.prob").count()
            bars = page.locator("svg#timeline rect.segment").count()
            page.screenshot(path=str(tmp_path / "page.png"))
            # A bad file shows the service's error, not a result.
            bad = tmp_path / "notes.txt"
            bad.write_text("not a video")
            page.set_input_files("#file", str(bad))
            page.click("#submit")
            page.wait_for_selector("#error:not([hidden])", timeout=60_000)
            error = page.inner_text("#error")
        finally:
            browser.close()
    expected = requests.post(
        f"{service['url']}/v1/score", files={"file": (path.name, path.read_bytes())}, timeout=120
    ).json()
    assert label == expected["label"]
    assert rows == 10 and bars == len(expected["segments"]) == 3
    assert error.startswith("415")


def test_service_recovers_from_a_killed_encoder_replica(service, bench_rows):
    """SIGKILL the Encoder replica's process: Serve replaces it and requests succeed again."""
    import os
    import signal
    import time

    import ray
    from ray.util.state import list_actors

    def encoder_pids() -> list[int]:
        # This session's cluster by address: another Ray on the machine (a second test
        # run, a user's) would make the state API refuse to guess.
        actors = list_actors(
            address=ray.get_runtime_context().gcs_address,
            filters=[("state", "=", "ALIVE")],
            limit=1000,
        )
        return [a.pid for a in actors if "Encoder" in (a.class_name or "") and a.pid]

    path = _clip(bench_rows, audio=True)
    url = f"{service['url']}/v1/score"
    before = encoder_pids()
    assert before
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    outcomes = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            r = requests.post(url, files={"file": (path.name, path.read_bytes())}, timeout=60)
            outcomes.append(r.status_code)
            if r.status_code == 200:
                break
        except requests.RequestException as err:
            outcomes.append(type(err).__name__)
        time.sleep(0.5)
    assert outcomes and outcomes[-1] == 200, outcomes
    # Meanwhile: 503 (retry) or a refused connection, never a 500.
    assert set(outcomes) <= {200, 503, "ConnectionError", "ReadTimeout"}, outcomes
    print("outcomes while the replica was replaced:", outcomes)
    after = encoder_pids()
    assert after and not set(after) & set(before)  # a new replica process
    for _ in range(3):  # and it keeps working
        r = requests.post(url, files={"file": (path.name, path.read_bytes())}, timeout=60)
        assert r.status_code == 200


def test_batch_predict_gives_what_the_service_gives(service, bench_rows, tmp_path):
    """`avarnet predict`'s pipeline (Ray Data decode tasks -> encoder actors -> Predictor)
    and the service (Encoder -> Classifier deployments), same model, same clips."""
    from workflows.predict import load_model, read_scores, run_predict

    rows = [dict(r, label="") for r in bench_rows[:3]]
    predictor, model = load_model("models:/avarnet@champion", service["tracking_uri"], tmp_path)
    # Beside the service on the session's 2 CPUs: half a CPU per decode task and actor.
    summary = run_predict(
        rows, tmp_path / "out", predictor, model, progress=False, encoder_cpus=0.5, decode_cpus=0.5
    )
    assert summary.clips_ok == 3
    batch = {r["video_id"]: r for r in read_scores(tmp_path / "out", model)}
    for row in rows:
        with open(row["path"], "rb") as f:
            online = requests.post(
                f"{service['url']}/v1/score", files={"file": f}, timeout=120
            ).json()
        offline = batch[row["video_id"]]
        assert online["model"]["version"] == model.version == offline["model_version"]
        assert online["label"] == offline["label"]
        np.testing.assert_allclose(
            [online["probabilities"][c] for c in predictor.labels],
            [offline["probabilities"][c] for c in predictor.labels],
            atol=1e-5,
        )
        np.testing.assert_allclose(
            [s["anomaly_score"] for s in online["segments"]],
            [s["anomaly_score"] for s in offline["segments"]],
            atol=1e-5,
        )
        assert [s["start_s"] for s in online["segments"]] == [
            s["start_s"] for s in offline["segments"]
        ]
