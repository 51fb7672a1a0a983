"""serve.client without a service: a closed port, a missing file, and the service's
answers (200, an error in the API's shape, a body that is not JSON, a timeout) given to a
real ``requests.Session`` through a transport adapter, so that no server is started."""

from __future__ import annotations

import json
import socket

import pytest
import requests
from requests.adapters import BaseAdapter

from serve.client import ScoreError, score_file


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Answer(BaseAdapter):
    """Answers every request with ``status`` and ``body`` (or raises ``error``); keeps
    what was sent."""

    def __init__(self, status=200, body=b"", error=None):
        super().__init__()
        self.status, self.body, self.error, self.sent = status, body, error, []

    def send(self, request, **kwargs):
        self.sent.append((request, kwargs))
        if self.error is not None:
            raise self.error
        r = requests.Response()
        r.status_code, r._content, r.url, r.request = self.status, self.body, request.url, request
        r.headers["content-type"] = "application/json"
        return r

    def close(self):
        pass


def _session(adapter: Answer) -> requests.Session:
    s = requests.Session()
    s.mount("http://", adapter)
    return s


@pytest.fixture
def clip(tmp_path):
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    return p


def test_a_closed_port_says_nothing_answers_there(clip):
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ScoreError) as exc:
        score_file(url, clip, timeout_s=5)
    assert exc.value.status == 0
    assert str(exc.value) == (
        f"cannot reach the scoring service at {url} (nothing answers there: is "
        "`avarnet serve` running, and is the URL right?)"
    )


def test_a_missing_file_is_refused_before_any_request(tmp_path):
    adapter = Answer()
    with pytest.raises(FileNotFoundError, match="nope.mp4: no such file"):
        score_file("http://svc", tmp_path / "nope.mp4", session=_session(adapter))
    with pytest.raises(FileNotFoundError, match="no such file"):
        score_file("http://svc", tmp_path, session=_session(adapter))  # a folder is no clip
    assert adapter.sent == []


def test_the_clip_is_posted_as_multipart_field_file(clip):
    answer = {"label": "Fight", "probabilities": {"Fight": 0.9}}
    adapter = Answer(200, json.dumps(answer).encode())
    assert score_file("http://svc:8000/", clip, session=_session(adapter), timeout_s=7) == answer
    [(request, kwargs)] = adapter.sent
    assert request.method == "POST" and request.url == "http://svc:8000/v1/score"
    assert kwargs["timeout"] == 7
    assert request.headers["content-type"].startswith("multipart/form-data")
    assert b'name="file"; filename="clip.mp4"' in request.body
    assert clip.read_bytes() in request.body


def test_an_error_answer_gives_its_status_and_message(clip):
    body = {"error": {"status": 413, "message": "clip is 412 s long; the limit is 300 s"}}
    adapter = Answer(413, json.dumps(body).encode())
    with pytest.raises(ScoreError) as exc:
        score_file("http://svc", clip, session=_session(adapter))
    assert exc.value.status == 413
    assert str(exc.value) == "HTTP 413: clip is 412 s long; the limit is 300 s"


def test_an_answer_that_is_not_json_is_shown_cut_short(clip):
    adapter = Answer(502, b"<html>Bad Gateway</html>" + b"x" * 500)
    with pytest.raises(ScoreError) as exc:
        score_file("http://svc", clip, session=_session(adapter))
    assert exc.value.status == 502
    assert exc.value.message.startswith("<html>Bad Gateway</html>")
    assert len(exc.value.message) == 200


def test_a_timeout_names_the_limit(clip):
    adapter = Answer(error=requests.ReadTimeout("slow"))
    with pytest.raises(ScoreError, match=r"did not answer within 2.5 s") as exc:
        score_file("http://svc", clip, session=_session(adapter), timeout_s=2.5)
    assert exc.value.status == 0


def test_other_transport_errors_are_one_line(clip):
    adapter = Answer(error=requests.exceptions.InvalidHeader("bad header"))
    with pytest.raises(ScoreError) as exc:
        score_file("http://svc", clip, session=_session(adapter))
    assert str(exc.value) == "cannot reach http://svc: InvalidHeader"
