"""GET /api/v2/events: live server-sent events, resumption from the database, caps,
and 1100 open streams on one head while other requests still answer promptly."""

import json
import selectors
import socket
import time

import pytest
import requests

from support.daemon import auth_headers, make_token
from support.uploads import upload
from support.slurm import jobs_config, slurm_conf, wait_for  # noqa: F401

pytestmark = [pytest.mark.databases("sqlite"), pytest.mark.slurm]

STREAM = {"Accept": "text/event-stream"}


def read_until(response, wanted, limit=50):
    """SSE events of ``response`` (dicts of fields) until one of type ``wanted``."""
    events, current = [], {}
    # chunk_size=1: requests would otherwise wait for 512 bytes before giving a line.
    for raw in response.iter_lines(chunk_size=1, decode_unicode=True):
        if raw == "":
            if current:
                events.append(current)
                if current.get("event") == wanted or len(events) >= limit:
                    return events
            current = {}
        elif raw.startswith(":"):
            current.setdefault("comments", []).append(raw)
        else:
            key, _, value = raw.partition(": ")
            current[key] = value
    return events


def open_raw_streams(port, count, token):
    """``count`` event streams on raw sockets; returns the sockets once each has its 200 head."""
    selector = selectors.DefaultSelector()
    request = (f"GET /api/v2/events?access_token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()
    sockets, heads = [], {}
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        sockets.append(sock)
        heads[sock] = b""
    deadline = time.monotonic() + 120
    pending = set(sockets)
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(1):
            data = key.fileobj.recv(65536)
            heads[key.fileobj] += data
            if b"retry: 3000" in heads[key.fileobj] or not data:
                pending.discard(key.fileobj)
                selector.unregister(key.fileobj)
    selector.close()
    statuses = [heads[s].split(b"\r\n", 1)[0] for s in sockets]
    return sockets, statuses


def test_events_live_resumed_and_capped(daemon_factory, shared_dir, slurm_conf):
    config = jobs_config(shared_dir, slurm_conf)
    config["notifications"] = {"max_streams_per_user": 3, "stream_heartbeat": "1s", "max_streams": 600}
    config["server"] = {"threads": 4}
    daemon = daemon_factory(config)
    url = daemon.url + "/api/v2/events"

    # Bad requests are refused clearly; without Accept it is no stream.
    assert daemon.get("/api/v2/events", user="alice").status_code == 400
    bad = daemon.get("/api/v2/events", user="alice", headers={**STREAM, "Last-Event-ID": "x1"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["message"]
    assert requests.get(url, headers=STREAM, timeout=10).status_code == 401

    with requests.get(url, headers={**auth_headers("alice"), **STREAM}, stream=True, timeout=60) as live:
        assert live.status_code == 200 and live.headers["Content-Type"].startswith("text/event-stream")
        # EventSource sends no headers: the token in the query opens a stream too.
        with requests.get(url, params={"access_token": make_token("alice")}, headers=STREAM, stream=True,
                          timeout=60) as second, \
                requests.get(url, headers={**auth_headers("alice"), **STREAM}, stream=True, timeout=60) as third:
            assert second.status_code == 200 and third.status_code == 200
            over = requests.get(url, headers={**auth_headers("alice"), **STREAM}, stream=True, timeout=10)
            assert over.status_code == 429 and "Retry-After" in over.headers
            over.close()
            # bob has his own cap, and sees none of alice's events.
            bobs = requests.get(url, headers={**auth_headers("bob"), **STREAM}, stream=True, timeout=10)
            assert bobs.status_code == 200
        submitted = daemon.post("/api/slurm/jobs/submit", user="alice",
                                json={"jobName": "stream me", "script": "#!/bin/bash\nexit 5\n"})
        job_id = submitted.json()["jobId"]
        events = read_until(live, "job.finished")
    finished = events[-1]
    assert finished["event"] == "job.finished"
    data = json.loads(finished["data"])
    assert data["jobId"] == job_id and data["state"] == "FAILED" and data["exitCode"] == "5:0"
    assert "exit code 5" in data["message"] and int(finished["id"]) == data["id"]
    bobs.close()

    # Resumption from the database: everything after the given id, oldest first.
    first_id = int(events[0]["id"]) if "id" in events[0] else int(finished["id"]) - 1
    with requests.get(url, headers={**auth_headers("alice"), **STREAM, "Last-Event-ID": str(first_id - 1)},
                      stream=True, timeout=60) as resumed:
        again = read_until(resumed, "job.finished")
        # Nothing more is pending: what comes next is a heartbeat (a comment), within its interval.
        beat = read_until(resumed, None, limit=1)
    assert beat == [{"comments": [": heartbeat"]}], beat
    assert [e["id"] for e in again if "id" in e][-1] == finished["id"]
    assert int([e["id"] for e in again if "id" in e][0]) >= first_id



def test_1100_open_streams_hold_no_worker_thread(daemon_factory, shared_dir, slurm_conf):
    config = jobs_config(shared_dir, slurm_conf)
    config["notifications"] = {"max_streams_per_user": 1200, "max_streams": 1200}
    config["server"] = {"threads": 4}
    daemon = daemon_factory(config)
    # More than 1024 open sockets: select() could not serve a connection numbered past them.
    sockets, statuses = open_raw_streams(daemon.port, 1100, make_token("bob"))
    try:
        assert statuses == [b"HTTP/1.1 200 OK"] * 1100
        # With 4 worker threads and 1100 streams open, other requests still answer promptly.
        took = []
        for _ in range(5):
            for path, user in (("/healthz", None), ("/api/v2/notifications", "bob")):
                start = time.monotonic()
                assert daemon.get(path, user=user, timeout=10).status_code == 200
                took.append(time.monotonic() - start)
        assert max(took) < 2, took
        print(f"1100 streams open: /healthz and GET /api/v2/notifications took at most {max(took) * 1000:.0f} ms")
        # And every stream gets bob's next event.
        upload(daemon, "bob", b"fan out", filename="fan out.txt")
        received = {sock: b"" for sock in sockets}
        deadline = time.monotonic() + 60
        selector = selectors.DefaultSelector()
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        while time.monotonic() < deadline and any(b"event: upload.completed" not in v for v in received.values()):
            for key, _ in selector.select(1):
                received[key.fileobj] += key.fileobj.recv(65536)
        selector.close()
        assert sum(b"event: upload.completed" in v for v in received.values()) == 1100
    finally:
        for sock in sockets:
            sock.close()
    assert daemon.get("/healthz", timeout=10).status_code == 200
