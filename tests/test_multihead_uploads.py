"""Uploads across two heads on one MariaDB and one shared folder: the load
balancer may send any request of an upload to any head, and a head may die
in the middle of one."""

import base64
from concurrent.futures import ThreadPoolExecutor
import hashlib
import http.client
import os
import time

import pytest

from support.daemon import auth_headers

pytestmark = pytest.mark.databases("mariadb", "postgres")

CHUNK = 64 * 1024
HEAD_CONFIG = {"uploads": {"min_chunk_size": "1KiB", "chunk_size": "64KiB"}}


@pytest.fixture
def heads(daemon_factory):
    return daemon_factory(config=HEAD_CONFIG), daemon_factory(config=HEAD_CONFIG)


def _send_chunk(head, upload_id, index, data):
    answer = head.post(f"/api/v2/files/upload/chunk?upload_id={upload_id}&chunk_index={index}",
                       user="alice", data=data[index * CHUNK:(index + 1) * CHUNK],
                       headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _content(head, file_id):
    answer = head.get(f"/api/v2/files/{file_id}/content", user="alice")
    assert answer.status_code == 200, answer.text
    return answer.content


def _listed(head, file_id):
    files = head.get("/api/v2/files", user="alice").json()["files"]
    return [f for f in files if f["file_id"] == file_id]


@pytest.mark.parametrize("in_parallel", [False, True], ids=["alternating", "concurrent"])
def test_chunks_of_one_upload_sent_to_both_heads(heads, in_parallel):
    a, b = heads
    data = os.urandom(8 * CHUNK + 1000)
    init = a.post("/api/v2/files/upload/init", user="alice",
                  json={"filename": "mesh.bin", "size": len(data), "chunk_size": CHUNK,
                        "sha256": hashlib.sha256(data).hexdigest()})
    assert init.status_code == 201, init.text
    upload_id, total = init.json()["upload_id"], init.json()["total_chunks"]
    assert total == 9

    if in_parallel:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: _send_chunk(heads[i % 2], upload_id, i, data), range(total)))
    else:
        for index in range(total):
            _send_chunk(heads[index % 2], upload_id, index, data)

    for head in heads:
        status = head.get(f"/api/v2/files/upload/{upload_id}", user="alice").json()
        assert status["received_chunks"] == list(range(total))
    done = b.post("/api/v2/files/upload/complete", user="alice", json={"upload_id": upload_id})
    assert done.status_code == 200, done.text
    file_id = done.json()["file_id"]
    assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()
    for head in heads:
        assert _listed(head, file_id)
        assert _content(head, file_id) == data
    # The other head agrees that the upload is over.
    assert a.post("/api/v2/files/upload/complete", user="alice",
                  json={"upload_id": upload_id}).status_code in (200, 404, 409)


def _tus_headers(**extra):
    return {**auth_headers("alice"), "Tus-Resumable": "1.0.0", **extra}


def _patch_then_die(head, upload_id, offset, body, sent_before_kill):
    """A PATCH whose client has sent ``sent_before_kill`` bytes of ``body``
    when the head is killed with SIGKILL."""
    conn = http.client.HTTPConnection("127.0.0.1", head.port, timeout=30)
    conn.putrequest("PATCH", f"/api/v2/files/tus/{upload_id}")
    for name, value in _tus_headers(**{"Upload-Offset": str(offset),
                                       "Content-Type": "application/offset+octet-stream",
                                       "Content-Length": str(len(body))}).items():
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(body[:sent_before_kill])
    time.sleep(0.5)  # let the head start writing; the test does not depend on how far it got
    head.kill()
    conn.close()


def test_tus_upload_resumed_on_the_other_head_after_kill_9(heads):
    a, b = heads
    data = os.urandom(6 * CHUNK + 123)
    metadata = "filename " + base64.b64encode(b"case.tar").decode()
    created = a.post("/api/v2/files/tus", headers=_tus_headers(**{
        "Upload-Length": str(len(data)), "Upload-Metadata": metadata}))
    assert created.status_code == 201, created.text
    upload_id = created.json()["upload_id"]
    first = a.request("PATCH", f"/api/v2/files/tus/{upload_id}", data=data[:2 * CHUNK],
                      headers=_tus_headers(**{"Upload-Offset": "0",
                                              "Content-Type": "application/offset+octet-stream"}))
    assert first.status_code == 204, first.text
    assert first.headers["Upload-Offset"] == str(2 * CHUNK)

    _patch_then_die(a, upload_id, 2 * CHUNK, data[2 * CHUNK:], sent_before_kill=CHUNK)

    head = b.request("HEAD", f"/api/v2/files/tus/{upload_id}", headers=_tus_headers())
    assert head.status_code == 200
    offset = int(head.headers["Upload-Offset"])
    assert 2 * CHUNK <= offset <= len(data)
    rest = b.request("PATCH", f"/api/v2/files/tus/{upload_id}", data=data[offset:],
                     headers=_tus_headers(**{"Upload-Offset": str(offset),
                                             "Content-Type": "application/offset+octet-stream"}))
    assert rest.status_code == 204, rest.text
    assert rest.headers["Upload-Offset"] == str(len(data))
    file_id = rest.headers["Upload-File-Id"]
    assert _content(b, file_id) == data

    a.start()  # the killed head comes back and sees the finished file
    assert _listed(a, file_id)
    again = a.request("HEAD", f"/api/v2/files/tus/{upload_id}", headers=_tus_headers())
    assert again.headers["Upload-Offset"] == str(len(data))
