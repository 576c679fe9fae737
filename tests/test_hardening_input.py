"""Input that is not what it claims: malformed numbers, encodings and shapes
in headers and bodies answer a 4xx with a clear message (or, for Range, are
ignored or clamped as RFC 9110 allows), never a 500."""

import base64
import json
import os

import jwt
import pytest
import requests

from support.daemon import TEST_SECRET, assert_no_traceback, auth_headers
from support.uploads import SMALL, upload
from support.waiting import wait_for


TEMPLATE = """\
name: Typed
version: "1.0.0"
category: general
slurm:
  partition: {default: compute, choices: [compute]}
  nodes: {default: 1, max: 2}
  cpus: 1
  memory: 1G
  time: "00:05:00"
parameters:
  - {name: text, type: string, required: true}
  - {name: count, type: int, default: 2, min: 1, max: 5}
  - {name: ratio, type: float, default: 0.5}
  - {name: fast, type: bool, default: false}
script: |
  echo "$PARAM_TEXT"
"""
RENDER = "/api/v2/templates/official.typed/render"
# Every endpoint that takes a JSON body, with a body that is otherwise fine.
JSON_BODIES = [
    ("/api/v2/files/upload/init", {"filename": "a.bin", "size": 10}),
    ("/api/v2/files/upload/complete", {"upload_id": "x" * 32}),
    (RENDER, {"parameters": {"text": "x"}}),
    ("/api/slurm/jobs/submit", {"template_id": "official.typed", "parameters": {"text": "x"}}),
]
HUGE = "9" * 5000
WRONG_VALUES = [None, True, 1, -1, 1.5, "text", [], ["a"], {}, {"a": 1}, 2 ** 63, -(2 ** 63)]


@pytest.fixture(scope="module")
def portal(users):
    from support.daemon import Daemon, SharedTree
    shared = SharedTree()
    os.makedirs(os.path.join(shared.templates, "official"), exist_ok=True)
    with open(os.path.join(shared.templates, "official", "typed.yaml"), "w", encoding="utf-8") as out:
        out.write(TEMPLATE)
    daemon = Daemon(shared, config={**SMALL, "security": {"rate_limits": {
        "submit": 0, "upload_init": 0}}})
    daemon.start()
    wait_for(lambda: daemon.get("/api/v2/templates/official.typed", user="alice").status_code == 200)
    yield daemon
    daemon.stop()
    logs = daemon.logs()
    shared.cleanup()
    assert_no_traceback(logs)


def _refused(answer, *statuses):
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    if statuses:
        assert answer.status_code in statuses, (answer.status_code, answer.text[:300])
    body = answer.json()
    assert body["success"] is False and body["error"] and body["message"], body
    return body


def _post_raw(daemon, path, raw):
    return daemon.post(path, user="alice", data=raw, headers={"Content-Type": "application/json"})


# -- the shape of a JSON body -------------------------------------------------


MALFORMED = {
    "nested 100000 deep": lambda body: "[" * 100000 + "]" * 100000,
    "nested 40 deep in a field": lambda body: json.dumps({**body, "extra": json.loads("[" * 40 + "]" * 40)}),
    "integer of 5000 digits": lambda body: json.dumps(body)[:-1] + f', "extra": {HUGE}}}',
    "integer beyond 64 bits": lambda body: json.dumps(body)[:-1] + ', "extra": 99999999999999999999}',
    "NaN": lambda body: json.dumps(body)[:-1] + ', "extra": NaN}',
    "number too large for a double": lambda body: json.dumps(body)[:-1] + ', "extra": 1e999}',
    "not UTF-8": lambda body: b'{"filename": "\xff\xfe"}',
    "a list, not an object": lambda body: json.dumps([body]),
}


@pytest.mark.parametrize("path,body", JSON_BODIES, ids=[p for p, _ in JSON_BODIES])
@pytest.mark.parametrize("shape", list(MALFORMED))
def test_malformed_json_bodies_answer_400(portal, path, body, shape):
    answer = _post_raw(portal, path, MALFORMED[shape](body))
    assert _refused(answer, 400)["error"] == "malformed_json"


# -- a field of the wrong JSON type ---------------------------------------------


def _fields(path, body):
    if path == RENDER or path.endswith("/submit"):
        return [(name, None) for name in body if name != "parameters"] + [
            ("parameters", name) for name in ("text", "count", "ratio", "fast")]
    return [(name, None) for name in body] + [(name, None) for name in (
        ("job_id", "sha256", "chunk_size") if path.endswith("/init") else ())]


CASES = [(path, body, field, sub, value) for path, body in JSON_BODIES
         if not path.endswith("/submit")  # the submit body has its own test (test_jobs_submit.py)
         for field, sub in _fields(path, body) for value in WRONG_VALUES]


@pytest.mark.parametrize("path,body,field,sub,value", CASES,
                         ids=[f"{p.rsplit('/', 1)[-1]}.{f}{'.' + s if s else ''}={json.dumps(v)[:12]}"
                              for p, _, f, s, v in CASES])
def test_a_field_of_the_wrong_type_is_never_a_server_error(portal, path, body, field, sub, value):
    sent = json.loads(json.dumps(body))
    if sub:
        sent.setdefault(field, {})[sub] = value
    else:
        sent[field] = value
    answer = portal.post(path, user="alice", json=sent)
    if answer.status_code < 400:
        return  # a value of another type that is still acceptable (1 for a float, ...)
    _refused(answer)


@pytest.mark.parametrize("value", WRONG_VALUES[:1] + WRONG_VALUES[2:])
def test_parameters_of_the_wrong_shape_are_refused(portal, value):
    _refused(portal.post(RENDER, user="alice", json={"parameters": value}))


# -- numbers in headers ---------------------------------------------------------


@pytest.fixture(scope="module")
def stored(portal):
    return upload(portal, "alice", b"0123456789" * 100)


@pytest.mark.parametrize("header", [
    f"bytes={HUGE}-", f"bytes=0-{HUGE}", f"bytes=-{HUGE}", f"bytes={'1' * 300}-{'2' * 300}",
    "bytes=99999999999999999999-", "bytes=²-", "bytes=0-1,2-3", "bytes=-0", "bytes=5-2", "chars=0-1",
    "bytes=" + "9" * 8000])
def test_range_headers_with_huge_or_odd_numbers_are_clamped_ignored_or_416(portal, stored, header):
    answer = portal.get(f"/api/v2/files/{stored['file_id']}/content", user="alice",
                        headers={"Range": header})
    assert answer.status_code in (200, 206, 416), (header[:40], answer.status_code, answer.text[:300])
    if answer.status_code == 206:
        assert answer.content == (b"0123456789" * 100)[int(header[6:].split("-")[0] or 0):]


@pytest.mark.parametrize("value", ["²", HUGE, "99999999999999999999", "-1", "1e3", "0x10", "1 2", "+5"])
def test_last_event_id_that_is_not_an_offset_answers_400(portal, value):
    answer = portal.get("/api/slurm/jobs/12345/output", user="alice",
                        headers={"Accept": "text/event-stream", "Last-Event-ID": value})
    body = _refused(answer, 400)
    assert "Last-Event-ID" in body["message"]


@pytest.mark.parametrize("name,value", [
    ("Upload-Length", HUGE), ("Upload-Length", "99999999999999999999"), ("Upload-Length", "-5"),
    ("Upload-Length", "1e9"), ("Upload-Length", "²")])
def test_tus_sizes_that_are_not_sizes_answer_400_or_413(portal, name, value):
    meta = "filename " + base64.b64encode(b"a.bin").decode()
    answer = portal.request("POST", "/api/v2/files/tus", headers={
        **auth_headers("alice"), "Tus-Resumable": "1.0.0", "Upload-Metadata": meta, name: value})
    _refused(answer, 400, 413)


@pytest.mark.parametrize("value", [HUGE, "99999999999999999999", "-1", "²"])
def test_tus_offsets_that_are_not_offsets_answer_4xx(portal, value):
    meta = "filename " + base64.b64encode(b"b.bin").decode()
    created = portal.request("POST", "/api/v2/files/tus", headers={
        **auth_headers("alice"), "Tus-Resumable": "1.0.0", "Upload-Metadata": meta,
        "Upload-Length": "10"})
    assert created.status_code == 201, created.text
    answer = requests.patch(created.headers["Location"], data=b"x", timeout=30, headers={
        **auth_headers("alice"), "Tus-Resumable": "1.0.0", "Upload-Offset": value,
        "Content-Type": "application/offset+octet-stream"})
    _refused(answer, 400, 409)


@pytest.mark.parametrize("query", [f"offset={HUGE}", f"limit={HUGE}", "offset=²", "limit=1e400"])
def test_query_numbers_of_thousands_of_digits_answer_400(portal, query):
    _refused(portal.get(f"/api/v2/files?{query}", user="alice"), 400)


# -- tokens whose claims are not what they claim --------------------------------


def _raw_token(payload):
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(payload.encode()).rstrip(b"=")
    signing = header + b"." + body
    import hashlib
    import hmac
    signature = base64.urlsafe_b64encode(
        hmac.new(TEST_SECRET.encode(), signing, hashlib.sha256).digest()).rstrip(b"=")
    return (signing + b"." + signature).decode()


@pytest.mark.parametrize("payload", [
    '{"sub": "alice", "exp": ' + HUGE + '}',
    '{"sub": "alice", "exp": 1e999}',
    '{"sub": "alice", "exp": "soon"}',
    '{"sub": ["alice"], "exp": 4102444800}',
    '{"sub": {"name": "alice"}, "exp": 4102444800}',
    '{"sub": 2001, "exp": 4102444800}',
    '{"sub": "alice", "exp": 4102444800, "roles": ' + "[" * 3000 + "]" * 3000 + "}",
    '{"sub": "alice", "exp": 4102444800, "roles": {"admin": true}}',
    '{"sub": "alice", "exp": 4102444800, "roles": 7}',
])
def test_tokens_with_claims_of_the_wrong_shape_are_refused(portal, payload):
    answer = portal.get("/api/v2/me", headers={"Authorization": f"Bearer {_raw_token(payload)}"})
    if answer.status_code == 200:  # roles of a strange shape: simply not an administrator
        assert answer.json()["admin"] is False
        return
    assert answer.status_code in (401, 403, 422), (answer.status_code, answer.text[:300])
    body = answer.json()
    assert body.get("msg") or body.get("message")


def test_a_valid_token_still_works(portal):
    token = jwt.encode({"sub": "alice", "exp": 4102444800}, TEST_SECRET, algorithm="HS256")
    assert portal.get("/api/v2/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200


# -- sizes and times written with hundreds of digits ------------------------------

LONG = ["9" * 5000, "9" * 300, "1-" + "9" * 5000, "9" * 5000 + ":00:00", "9" * 400 + "G",
        "9" * 5000 + "G", "9" * 400 + ".5G", "0." + "9" * 5000 + "G", "1" * 20]


@pytest.mark.parametrize("field", ["memory", "time"])
@pytest.mark.parametrize("value", LONG, ids=[f"{v[:6]}..{len(v)}" for v in LONG])
def test_sizes_and_times_of_hundreds_of_digits_answer_400(portal, field, value):
    submitted = portal.post("/api/slurm/jobs/submit", user="alice",
                            json={"jobName": "long", "script": "#!/bin/bash\ntrue\n", field: value})
    if submitted.status_code != 200:  # "1" * 20 minutes is refused too; the rest surely
        _refused(submitted, 400)
    rendered = portal.post(RENDER, user="alice",
                           json={"parameters": {"text": "x"}, "overrides": {field: value}})
    _refused(rendered, 400)
    for answer in (submitted, rendered):
        assert "Exceeds the limit" not in answer.text  # Python's words, not ours
