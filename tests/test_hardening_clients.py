"""Clients that hold what they are given, made-up requests, and what error answers show.

- Slow readers: downloads are sent by waitress' own file streaming, so a user's
  connections that read nothing hold no worker thread; live output streams are
  capped per user as well as per head.
- Made-up methods, paths and headers: metrics labels come from fixed sets and
  logged values are bounded.
- Error answers and anonymous /readyz name no path or command of the head.
"""

import logging
import os
import random
import re
import select
import shutil
import socket
import string
import sys
import time

import pytest
import requests

from hpcportal.requestlabels import BoundedLogValues
from support.daemon import REPO, auth_headers
from support.slurm import jobs_config, output, slurm_conf, wait_finished, wait_for  # noqa: F401

SUBMIT = "/api/slurm/jobs/submit"
BIG = 200 * 1024 * 1024
SLOW_CLIENTS = 12
# The issue's bound: other users' requests keep answering within a second (of what the
# same request takes before the slow clients come: the test machine may be busy).
ANSWER_WITHIN = 1.0
# Requests of other users, checked while the slow clients hold their connections.
OTHERS = (("/healthz", None), ("/api/v2/me", "bob"), ("/api/slurm/jobs", "bob"))


def submit(daemon, user, script, name="clients"):
    answer = daemon.post(SUBMIT, user=user, json={"jobName": name, "script": script})
    assert answer.status_code == 200, answer.text
    return answer.json()["jobId"]


def open_silent_download(daemon, path, user, requests_in_one_packet=1):
    """A connection that asks for ``path`` (maybe several times, pipelined) and then
    reads nothing (a tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", daemon.port))
    token = auth_headers(user)["Authorization"]
    one = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n\r\n"
    sock.sendall((one * requests_in_one_packet).encode())
    return sock


def read_download(sock):
    """Reads one answer of ``open_silent_download``; the length of its body, all zeros."""
    sock.settimeout(60)
    head = b""
    while b"\r\n\r\n" not in head:
        block = sock.recv(65536)
        assert block, "the connection closed before the answer's header"
        head += block
    header, _, body = head.partition(b"\r\n\r\n")
    assert header.startswith(b"HTTP/1.1 200")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", header).group(1))
    assert not body.strip(b"\0")
    received = len(body)
    while received < length:
        block = sock.recv(min(1024 * 1024, length - received))
        assert block, f"the download ended after {received} of {length} bytes"
        assert not block.strip(b"\0")
        received += len(block)
    return received


def timed_get(daemon, path, user=None, **kwargs):
    started = time.monotonic()
    answer = daemon.get(path, user=user, timeout=30, **kwargs)
    return answer, time.monotonic() - started


def usual_times(daemon):
    """The slowest of three of each of OTHERS, before any slow client."""
    times = {}
    for path, user in OTHERS * 3:
        answer, took = timed_get(daemon, path, user=user)
        assert answer.status_code == 200, answer.text
        times[path] = max(times.get(path, 0), took)
    return times


def assert_others_answer(daemon, usual, rounds=3):
    """Without a worker thread free they would not answer at all (30 s timeout)."""
    for _ in range(rounds):
        for path, user in OTHERS:
            answer, took = timed_get(daemon, path, user=user)
            assert answer.status_code == 200, answer.text
            assert took < ANSWER_WITHIN + usual[path], (path, took, usual[path])


@pytest.mark.databases("sqlite")
@pytest.mark.slurm
def test_silent_downloads_leave_the_worker_threads_to_others(daemon_factory, shared_dir, slurm_conf):
    # Default thread count (8): twelve silent downloads outnumber the workers.
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    assert daemon.config["server"]["threads"] == 8
    job_id = submit(daemon, "alice", f"#!/bin/bash\ntruncate -s {BIG} big.bin\n")
    wait_finished(daemon, "alice", job_id)
    path = f"/api/slurm/jobs/{job_id}/files/big.bin"
    part = daemon.get(path, user="alice", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == bytes(100)
    # waitress sends a range from the event loop too: exactly the range, not the file's rest.
    span = daemon.get(path, user="alice", headers={"Range": "bytes=5000000-8999999"})
    assert span.status_code == 206 and len(span.content) == 4000000
    bobs_job = submit(daemon, "bob", "#!/bin/bash\necho bob\n")
    usual = usual_times(daemon)

    # Ten of them, more than the workers, ask twice in one packet: waitress would hold a
    # worker between the two answers until the client reads the first.
    silent = [open_silent_download(daemon, path, "alice", 1 if n < 2 else 2) for n in range(SLOW_CLIENTS)]
    try:
        # Positive signal: every download has started (its first bytes wait in our socket).
        started = set()

        def all_started():
            readable, _, _ = select.select([s for s in silent if s not in started], [], [], 0.5)
            started.update(readable)
            return len(started) == SLOW_CLIENTS
        wait_for(all_started, timeout=30, interval=0, message=f"all {SLOW_CLIENTS} downloads served",
                 show=lambda: f"{len(started)} served")

        assert_others_answer(daemon, usual)
        assert [j["jobId"] for j in daemon.get("/api/slurm/jobs", user="bob").json()["jobs"]] == [bobs_job]

        # A silent client that starts reading gets the whole file, exactly; having
        # asked twice, it gets one answer, then the connection closes (it may ask again).
        assert read_download(silent[2]) == BIG
        assert silent[2].recv(65536) == b""
    finally:
        for sock in silent:
            sock.close()
    assert daemon.get("/healthz", timeout=5).status_code == 200


@pytest.mark.databases("sqlite")
@pytest.mark.slurm
def test_a_file_that_shrinks_while_sent_ends_its_download(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    job_id = submit(daemon, "alice", "#!/bin/bash\ntruncate -s 64M shrinks.bin\n")
    wait_finished(daemon, "alice", job_id)
    sock = open_silent_download(daemon, f"/api/slurm/jobs/{job_id}/files/shrinks.bin", "alice")
    try:
        assert select.select([sock], [], [], 30)[0], "the download did not start"
        # Its user cuts the file: what is left to send is no longer there.
        folder = daemon.get(f"/api/slurm/jobs/{job_id}/files", user="alice").json()["job_dir"]
        os.truncate(os.path.join(folder, "shrinks.bin"), 1024 * 1024)
        sock.settimeout(30)
        received = b""
        while True:
            block = sock.recv(1024 * 1024)  # a timeout here: the server keeps the answer open
            if not block:
                break
            received += block
        header, _, body = received.partition(b"\r\n\r\n")
        assert header.startswith(b"HTTP/1.1 200") and b"67108864" in header
        assert len(body) < 64 * 1024 * 1024  # cut short: the client knows it is incomplete
    finally:
        sock.close()
    assert daemon.get("/healthz", timeout=5).status_code == 200
    assert "download ended early: the file shrank" in daemon.logs()
    assert "Traceback" not in daemon.logs()


@pytest.mark.databases("sqlite")
@pytest.mark.slurm
def test_live_streams_are_capped_per_user(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, max_streams=4, max_streams_per_user=2,
                                        stream_heartbeat="1s"))
    script = "#!/bin/bash\necho started\nsleep 120\n"
    alices, bobs = submit(daemon, "alice", script), submit(daemon, "bob", script)
    for user, job_id in (("alice", alices), ("bob", bobs)):
        wait_for(lambda: output(daemon, user, job_id) == "started\n", message=f"{user}'s job to run")
    usual = usual_times(daemon)

    def stream(user, job_id):
        return requests.get(f"{daemon.url}/api/slurm/jobs/{job_id}/output", stream=True, timeout=30,
                            headers={**auth_headers(user), "Accept": "text/event-stream"})

    # Alice opens twelve streams and reads none of them.
    alice_streams = [stream("alice", alices) for _ in range(SLOW_CLIENTS)]
    try:
        assert sorted(s.status_code for s in alice_streams) == [200] * 2 + [429] * 10
        refused = next(s for s in alice_streams if s.status_code == 429)
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["success"] is False and refused.json()["error"] == "too_many_streams"
        assert refused.json()["limit"] == 2

        # Bob keeps his, and everyone else's requests keep answering.
        with stream("bob", bobs) as bobs_stream:
            assert bobs_stream.status_code == 200
            first = next(bobs_stream.iter_lines())
            assert first == b"retry: 2000"
            assert_others_answer(daemon, usual)
    finally:
        for answer in alice_streams:
            answer.close()

    # Closed streams give their slots back (noticed at the next heartbeat).
    def reopened():
        answer = stream("alice", alices)
        if answer.status_code == 200:
            return answer
        answer.close()
        return None

    again = [wait_for(reopened, timeout=30, message="alice's stream slots back") for _ in range(2)]
    for answer in again:
        answer.close()
    for user, job_id in (("alice", alices), ("bob", bobs)):
        daemon.delete(f"/api/slurm/jobs/{job_id}", user=user)


FIXED_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}


def random_request(rng):
    method = rng.choice(["GET", "POST", "DELETE", "PROPFIND", "BREW", "G3T", "M" * rng.randint(20, 3000),
                         "".join(rng.choices(string.ascii_uppercase, k=rng.randint(1, 40)))])
    segments = ["".join(rng.choices(string.ascii_letters + string.digits + "%-._~", k=rng.randint(1, 60)))
                for _ in range(rng.randint(1, 6))]
    path = rng.choice(["/api/v2/", "/api/slurm/jobs/", "/", "/x/"]) + "/".join(segments)
    if rng.random() < 0.2:
        path += "/" + "z" * 6000
    headers = {f"X-{''.join(rng.choices(string.ascii_letters, k=8))}": "v" * rng.randint(0, 2000)
               for _ in range(rng.randint(0, 5))}
    headers["User-Agent"] = "agent-" + "u" * rng.randint(0, 6000)
    headers["X-Request-ID"] = "rid-" + "r" * rng.randint(0, 6000)
    return method, path, headers


def series(text, name):
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def labels_of(line):
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}", 1)[0]))


def test_made_up_requests_add_no_metrics_series_and_logs_stay_bounded(daemon):
    rng = random.Random(13)
    routes = set(daemon.get("/api/openapi.json").json()["paths"]) | {"unmatched"}
    with requests.Session() as session:
        for _ in range(200):
            method, path, headers = random_request(rng)
            try:
                session.request(method, daemon.url + path, headers=headers, timeout=30)
            except requests.ConnectionError:
                session.close()  # waitress refused the request line; the next one opens a connection
    # A path with a line break and escape codes, a long method, a long path: all to be logged.
    requests.post(daemon.url + "/api/v2/forged%0aINFO%20fake%20line%1b[31m", timeout=30)
    requests.request("X" * 5000, daemon.url + "/api/v2/me", headers=auth_headers("alice"), timeout=30)
    requests.delete(daemon.url + "/api/v2/" + "p" * 6000, headers=auth_headers("alice"), timeout=30)

    text = daemon.get("/metrics").text
    requests_series = series(text, "hpcportal_http_requests_total")
    assert requests_series
    for line in requests_series + series(text, "hpcportal_http_request_duration_seconds_count"):
        labels = labels_of(line)
        assert labels["method"] in FIXED_METHODS, line
        assert labels["route"] in routes, line
    assert any(labels_of(line)["method"] == "other" for line in requests_series)
    assert any(labels_of(line)["route"] == "unmatched" for line in requests_series)
    # 200 more made-up requests add no series at all: the sets are fixed.
    before = {line.rsplit(" ", 1)[0] for line in series(text, "hpcportal_http_requests_total")}
    with requests.Session() as session:
        for _ in range(200):
            method, path, headers = random_request(rng)
            if method in FIXED_METHODS or len(method) > 100:
                method = "".join(rng.choices(string.ascii_uppercase, k=12))
            session.request(method, daemon.url + "/api/v2/" + path.rsplit("/", 1)[-1][:100],
                            headers={"User-Agent": headers["User-Agent"]}, timeout=30)
    after = daemon.get("/metrics").text
    grown = {line.rsplit(" ", 1)[0] for line in series(after, "hpcportal_http_requests_total")} - before
    assert grown <= {'hpcportal_http_requests_total{method="GET",route="/metrics",status="200"}'}, grown
    assert len(after) < 200_000

    logs = daemon.logs()
    assert "fake line" in logs  # the forged path was logged, on the line of its request...
    assert not any(line.startswith("INFO fake line") or line.startswith("fake line")
                   for line in logs.splitlines())
    assert "\x1b" not in logs
    assert "X" * 300 not in logs and "p" * 300 not in logs and "z" * 300 not in logs
    assert "u" * 300 not in logs and "r" * 300 not in logs
    assert max(len(line) for line in logs.splitlines()) < 2000


@pytest.mark.unit  # in process
def test_waitress_log_records_are_cut_and_escaped():
    # waitress formats request paths into its own messages ("Client disconnected while serving ...").
    bounded = BoundedLogValues(limit=50)
    made = logging.LogRecord("waitress", logging.INFO, __file__, 1,
                             "Client disconnected while serving %s" % ("/a\nfake" + "b" * 500), None, None)
    assert bounded.filter(made) and "\n" not in made.getMessage() and len(made.getMessage()) < 150
    with_args = logging.LogRecord("waitress", logging.INFO, __file__, 1, "serving %s (%d)",
                                  ("/c\r" + "d" * 500, 7), None)
    assert bounded.filter(with_args)
    assert with_args.getMessage().startswith("serving /c\\r") and "(7)" in with_args.getMessage()
    assert len(with_args.getMessage()) < 100


def server_strings(shared_dir, *extra):
    venv = os.path.dirname(os.path.dirname(sys.executable))
    return [shared_dir.root, shared_dir.state, shared_dir.uploads, "/usr/bin", "/usr/sbin", ".venv", venv,
            REPO, "slurm.conf", "setpriv", *extra]


def assert_names_nothing(answer, forbidden, what):
    text = answer.text
    for word in forbidden:
        assert word not in text, f"{what} ({answer.status_code}) names {word!r}: {text[:500]}"


@pytest.mark.databases("sqlite")
@pytest.mark.slurm
def test_error_answers_and_anonymous_readyz_name_no_server_paths(daemon_factory, shared_dir, slurm_conf):
    # A head whose Slurm commands are missing: the monitor fails, submissions fail.
    empty_bin = os.path.join(shared_dir.root, "no-slurm-here")
    os.makedirs(empty_bin)
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, bin_dir=empty_bin, poll_interval="1s"))
    forbidden = server_strings(shared_dir, empty_bin, slurm_conf)

    def monitor_failed():
        checks = daemon.get("/readyz", user="alice", admin=True).json()["checks"]
        return "degraded" in checks["jobs"].get("detail", "") and checks
    admin_checks = wait_for(monitor_failed, message="the job monitor to notice Slurm is missing")
    assert "squeue" in admin_checks["jobs"]["detail"]  # an administrator sees why

    anonymous = daemon.get("/readyz")
    assert anonymous.json()["checks"]["jobs"] == {"ok": True}
    # Anyone may know whether the head is ready and which Slurm backend it uses; nothing more.
    public = anonymous.json()["checks"]
    assert all(set(check) == {"ok"} for name, check in public.items() if name != "slurm"), public
    assert public["slurm"] == {"ok": True, "backend": "cli"}
    assert_names_nothing(anonymous, forbidden + ["squeue", "sbatch", "detail"], "anonymous /readyz")
    assert_names_nothing(daemon.get("/readyz", user="alice"), forbidden + ["squeue", "detail"],
                         "a user's /readyz")

    anonymous_errors = [
        ("GET", "/api/v2/nowhere", {}, None),
        ("GET", "/nowhere/at/all", {}, None),
        ("PATCH", "/healthz", {}, None),
        ("BREW", "/api/v2/me", {}, None),
        ("GET", "/api/v2/me", {"Authorization": "Bearer not.a.token"}, None),
        ("GET", "/api/v2/me", {"Authorization": "Basic YWxpY2U6eA=="}, None),
        ("POST", SUBMIT, {}, "{"),
    ]
    for method, path, headers, body in anonymous_errors:
        answer = requests.request(method, daemon.url + path, headers=headers, data=body, timeout=30)
        assert answer.status_code >= 400
        assert_names_nothing(answer, forbidden + ["sbatch", "squeue", "Traceback"], f"{method} {path}")
        assert answer.json()["success"] is False

    user_errors = [
        daemon.post(SUBMIT, user="alice", data="{not json", headers={"Content-Type": "application/json"}),
        daemon.post(SUBMIT, user="alice", json={"jobName": "x"}),
        daemon.get("/api/slurm/jobs/12345/files/nothing.txt", user="alice"),
        daemon.get("/api/v2/files/upload/nothing", user="alice"),
        daemon.get("/api/v2/apptainer/images/nothing", user="alice"),
    ]
    for answer in user_errors:
        assert 400 <= answer.status_code < 500, answer.text
        assert_names_nothing(answer, forbidden, f"a user's error {answer.url}")

    # Submitting with the Slurm commands missing: 503 naming the command, not where it was looked for.
    missing = daemon.post(SUBMIT, user="alice", json={"jobName": "x", "script": "#!/bin/bash\ntrue\n"})
    assert missing.status_code == 503, missing.text
    assert missing.json()["error"] == "slurm_missing" and "Retry-After" in missing.headers
    assert_names_nothing(missing, forbidden, "a submission without Slurm")
    assert empty_bin in daemon.logs()  # the operator finds the path in the log

    # Every command but sbatch: setpriv starts, cannot run sbatch, and says where it looked.
    partial_bin = os.path.join(shared_dir.root, "slurm-without-sbatch")
    os.makedirs(partial_bin)
    for command in ("sinfo", "squeue", "sacct", "scancel", "scontrol", "sacctmgr"):
        if shutil.which(command):
            os.symlink(shutil.which(command), os.path.join(partial_bin, command))
    partial = daemon_factory(jobs_config(shared_dir, slurm_conf, bin_dir=partial_bin), shared=shared_dir)
    missing = partial.post(SUBMIT, user="alice", json={"jobName": "x", "script": "#!/bin/bash\ntrue\n"})
    assert missing.status_code == 503, missing.text
    assert missing.json()["error"] == "slurm_missing" and "sbatch" in missing.json()["message"]
    assert_names_nothing(missing, forbidden + [partial_bin], "a submission without sbatch")
