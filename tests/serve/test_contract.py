"""The service's HTTP contract: schemathesis generates requests from the deployed service's
own /openapi.json and checks every answer against it (status codes, content types, bodies,
headers; invalid requests refused with 4xx, never a 5xx), over every operation, against
the real deployment (Ray Serve's proxy included). Bounded: a fixed number of examples per
operation, derandomized, so that the run is reproducible and takes seconds."""

from __future__ import annotations

from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 100  # per operation, fuzzing phase (the examples and coverage phases add theirs)
CASES: Counter[str] = Counter()  # generated cases per operation


@pytest.fixture(autouse=True)
def _schemathesis_node_id(request, monkeypatch):
    """schemathesis 4.32's lazy loader (``from_fixture``) renames the running test through
    ``Node._nodeid``, which pytest 9.2 replaced with ``Node._id``: give it back, read-only
    (the per-operation names then come from schemathesis's subtest reports alone)."""
    if not hasattr(request.node, "_nodeid"):
        shim = property(lambda node: node.nodeid, lambda node, value: None)
        monkeypatch.setattr(type(request.node), "_nodeid", shim, raising=False)


@pytest.fixture(scope="module")
def api_schema(service):
    return schemathesis.openapi.from_url(f"{service['url']}/openapi.json", timeout=30)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_keeps_its_contract(case):
    CASES[case.operation.label] += 1
    excluded = []
    if case.operation.path == "/v1/score":
        # A schema-valid body of /v1/score is any byte string, and most byte strings are no
        # decodable video: they are rightly refused (415, or 400 when empty), so "valid data
        # is accepted" cannot hold by design. Every other check runs on it, negative data
        # rejection included. (schemathesis also sends realistic files: its 1x1 PNG, JPEG,
        # GIF and WebP images are decoded by FFmpeg as one-frame clips, and scored.)
        excluded.append(positive_data_acceptance)
    case.call_and_validate(excluded_checks=excluded, timeout=60)


def test_every_operation_was_exercised(api_schema):
    if not CASES:
        pytest.skip("test_every_operation_keeps_its_contract did not run")
    operations = {op.ok().label for op in api_schema.get_all_operations()}
    assert operations == {"GET /v1/health", "GET /v1/model", "POST /v1/score"}
    assert set(CASES) == operations, CASES
    # The GETs take no input: their cases are a handful (the undocumented methods among them).
    assert CASES["POST /v1/score"] >= MAX_EXAMPLES, CASES
    print(f"generated cases: {dict(CASES)}, {sum(CASES.values())} in all")


def test_score_documents_both_upload_forms(service):
    doc = requests.get(f"{service['url']}/openapi.json", timeout=30).json()
    body = doc["paths"]["/v1/score"]["post"]["requestBody"]
    assert body["required"] is True
    content = body["content"]
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    assert content["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert content["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}


def _documented_error(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].split(";")[0] == "application/json"
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"status", "type", "message"}
    assert body["error"]["status"] == status
    return body["error"]


def test_unknown_paths_and_wrong_methods_answer_the_error_form(service):
    """Through Ray Serve's proxy: the application is deployed at ``/``, so every path
    reaches it (and its handlers) except the proxy's own ``/-/routes`` and ``/-/healthz``.
    (At another route prefix, the proxy itself would answer paths outside it: a plain-text
    404.)"""
    url = service["url"]
    for path in ("/nope", "/v1/nope", "/-/nope"):
        err = _documented_error(requests.get(f"{url}{path}", timeout=30), 404)
        assert err["type"] == "not_found"
    r = requests.delete(f"{url}/v1/score", timeout=30)
    err = _documented_error(r, 405)
    assert err["type"] == "method_not_allowed"
    assert r.headers["allow"] == "POST"
    r = requests.post(f"{url}/v1/health", timeout=30)
    assert _documented_error(r, 405)["type"] == "method_not_allowed"
    assert r.headers["allow"] == "GET"
