"""A small HTTP client for the scoring service (``avarnet score``, the pipeline's smoke
test and ``benchmarks/serve.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["ScoreError", "score_file"]


class ScoreError(Exception):
    """The service answered with an error (``status``) or could not be reached (0)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


def score_file(
    url: str, path: str | os.PathLike, *, timeout_s: float = 300.0, session=None
) -> dict[str, Any]:
    """POST the clip at ``path`` to ``{url}/v1/score`` (multipart field ``file``)."""
    import requests

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    http = session or requests
    try:
        with p.open("rb") as f:
            r = http.post(
                f"{url.rstrip('/')}/v1/score",
                files={"file": (p.name, f, "application/octet-stream")},
                timeout=timeout_s,
            )
    except requests.ConnectionError:
        raise ScoreError(
            0,
            f"cannot reach the scoring service at {url} (nothing answers there: is "
            "`avarnet serve` running, and is the URL right?)",
        ) from None
    except requests.Timeout:
        raise ScoreError(
            0, f"the scoring service at {url} did not answer within {timeout_s:g} s"
        ) from None
    except requests.RequestException as err:
        raise ScoreError(0, f"cannot reach {url}: {type(err).__name__}") from None
    try:
        body = r.json()
    except ValueError:
        raise ScoreError(r.status_code, r.text[:200]) from None
    if r.status_code != 200:
        raise ScoreError(r.status_code, body.get("error", {}).get("message", r.text[:200]))
    return body
