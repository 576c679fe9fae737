"""Watching jobs: list, detail, cancel, output (slices and live stream), results, partitions."""

import json
import os

import pytest
import requests

from support.daemon import auth_headers
from support.slurm import jobs_config, job, output, slurm_conf, wait_finished, wait_for  # noqa: F401

# Each test runs through the commands and through slurmrestd.
pytestmark = [pytest.mark.databases("sqlite"), pytest.mark.slurm, pytest.mark.slurm_backends("cli", "rest")]

SUBMIT = "/api/slurm/jobs/submit"


def submit(daemon, user, script, **fields):
    answer = daemon.post(SUBMIT, user=user, json={"jobName": fields.pop("name", "watch"), "script": script,
                                                  **fields})
    assert answer.status_code == 200, answer.text
    return answer.json()["jobId"]


def state_of(daemon, user, job_id):
    return job(daemon, user, job_id)["state"]


def test_list_detail_cancel_and_privacy(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    quick = submit(daemon, "alice", "#!/bin/bash\nexit 3\n", name="quick")
    slow = submit(daemon, "alice", "#!/bin/bash\nsleep 300\n", name="slow")
    bobs = submit(daemon, "bob", "#!/bin/bash\ntrue\n", name="bobs")

    listed = daemon.get("/api/slurm/jobs", user="alice").json()
    assert listed["total"] == 2
    assert [j["jobId"] for j in listed["jobs"]] == [slow, quick]  # newest first
    for key in ("jobId", "name", "user", "partition", "state", "reason", "exit_code", "submitted_at",
                "started_at", "ended_at", "elapsed", "nodes", "image", "template"):
        assert key in listed["jobs"][0]
    failed = wait_finished(daemon, "alice", quick)
    assert failed["state"] == "FAILED" and failed["exit_code"] == "3:0"
    assert failed["ended_at"] and failed["started_at"] and failed["nodes"] == "localhost"
    wait_for(lambda: state_of(daemon, "alice", slow) == "RUNNING", message="the slow job to run")
    running = daemon.get("/api/slurm/jobs", user="alice", params={"state": "RUNNING"}).json()
    assert [j["jobId"] for j in running["jobs"]] == [slow] and running["total"] == 1
    paged = daemon.get("/api/slurm/jobs", user="alice", params={"limit": 1, "offset": 1}).json()
    assert [j["jobId"] for j in paged["jobs"]] == [quick] and paged["total"] == 2

    # Another user's job does not exist for bob, whatever he tries.
    for method, path in (("GET", f"/api/slurm/jobs/{slow}"), ("DELETE", f"/api/slurm/jobs/{slow}"),
                         ("GET", f"/api/slurm/jobs/{slow}/output"), ("GET", f"/api/slurm/jobs/{slow}/files"),
                         ("GET", f"/api/slurm/jobs/{slow}/files/job.sbatch"), ("GET", "/api/slurm/jobs/999999"),
                         ("GET", "/api/slurm/jobs/abc")):
        assert daemon.request(method, path, user="bob").status_code == 404, (method, path)
    assert [j["jobId"] for j in daemon.get("/api/slurm/jobs", user="bob").json()["jobs"]] == [bobs]
    assert daemon.get("/api/slurm/jobs", user="bob", params={"all": "true"}).status_code == 403
    everyone = daemon.get("/api/slurm/jobs", user="bob", admin=True,
                          params={"all": "true"}).json()
    assert {slow, quick, bobs} <= {j["jobId"] for j in everyone["jobs"]}

    cancelled = daemon.delete(f"/api/slurm/jobs/{slow}", user="alice")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["success"] is True
    assert wait_finished(daemon, "alice", slow)["state"] == "CANCELLED"
    again = daemon.delete(f"/api/slurm/jobs/{slow}", user="alice")
    assert again.status_code == 409, again.text
    # The monitor stores what it saw: the state survives Slurm forgetting the job.
    wait_for(lambda: "CANCELLED" in _stored_states(shared_dir), message="the stored state")


def _stored_states(shared_dir):
    import sqlite3
    db = sqlite3.connect(os.path.join(shared_dir.state, "portal.db"))
    try:
        return {row[0] for row in db.execute("SELECT state FROM job")}
    finally:
        db.close()


LINES_SCRIPT = "#!/bin/bash\nfor i in $(seq 1 6); do echo \"line $i é\"; sleep 0.4; done\necho oops >&2\n"


def read_events(response, stop_after=None):
    events, current = [], {}
    for raw in response.iter_lines(decode_unicode=True):
        if raw is None:
            continue
        if raw == "":
            if current:
                events.append(current)
                if stop_after and len([e for e in events if e.get("event") == "output"]) >= stop_after:
                    break
                if current.get("event") in ("end", "timeout"):
                    break
            current = {}
            continue
        if raw.startswith(":"):
            current.setdefault("comments", []).append(raw)
            continue
        key, _, value = raw.partition(": ")
        current[key] = value
    return events


def test_output_slices_and_the_live_stream(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, max_streams=1, stream_heartbeat="1s"))
    job_id = submit(daemon, "alice", LINES_SCRIPT)
    url = f"{daemon.url}/api/slurm/jobs/{job_id}/output"
    stream_headers = {**auth_headers("alice"), "Accept": "text/event-stream"}

    with requests.get(url, headers=stream_headers, stream=True, timeout=60) as first:
        assert first.status_code == 200
        assert first.headers["Content-Type"].startswith("text/event-stream")
        # Only one stream at a time here: a second is refused instead of taking a worker thread.
        second = requests.get(url, headers=stream_headers, stream=True, timeout=10)
        assert second.status_code == 429 and "Retry-After" in second.headers
        second.close()
        partial = read_events(first, stop_after=1)
    received = "".join(json.loads(e["data"])["data"] for e in partial if e.get("event") == "output")
    resume_at = partial[-1]["id"]
    assert int(resume_at) == len(received.encode())

    def resumed():
        # The first stream's slot is freed once the daemon notices the client left (next write).
        answer = requests.get(url, headers={**stream_headers, "Last-Event-ID": resume_at}, stream=True,
                              timeout=60)
        if answer.status_code == 429:
            answer.close()
            return None
        return answer

    with wait_for(resumed, timeout=30, message="a free stream slot") as rest:
        assert rest.status_code == 200
        events = read_events(rest)
    assert events[-1]["event"] == "end"
    assert json.loads(events[-1]["data"])["state"] == "COMPLETED"
    received += "".join(json.loads(e["data"])["data"] for e in events if e.get("event") == "output")
    expected = "".join(f"line {i} é\n" for i in range(1, 7))
    assert received == expected
    # (Heartbeats are checked in test_streams_end_after_their_time_limit_with_heartbeats:
    # here the job may already be done when the stream resumes, on a loaded machine.)

    # Polling in small slices gives the same bytes, never splitting a character.
    wait_finished(daemon, "alice", job_id)
    offset, pieces = 0, []
    while True:
        piece = daemon.get(f"/api/slurm/jobs/{job_id}/output", user="alice",
                           params={"offset": offset, "limit": 7}).json()
        assert piece["offset"] == offset
        pieces.append(piece["data"])
        offset = piece["next_offset"]
        if piece["eof"]:
            break
    assert "".join(pieces) == expected
    assert output(daemon, "alice", job_id, "stderr") == "oops\n"
    assert daemon.get(f"/api/slurm/jobs/{job_id}/output", user="alice",
                      params={"stream": "secret"}).status_code == 400


def test_results_download_with_range_and_no_symlinks(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    secret = os.path.join(shared_dir.root, "root-only.txt")
    with open(secret, "w") as handle:
        handle.write("root secret\n")
    os.chmod(secret, 0o600)
    script = (f"#!/bin/bash\nprintf '0123456789' > result.txt\nln -s {secret} leak.txt\n"
              f"ln -s {secret} slurm-$SLURM_JOB_ID.err\necho done\n")
    job_id = submit(daemon, "alice", script)
    wait_finished(daemon, "alice", job_id)

    listing = daemon.get(f"/api/slurm/jobs/{job_id}/files", user="alice").json()
    names = [f["name"] for f in listing["files"]]
    assert "result.txt" in names and "job.sbatch" in names and f"slurm-{job_id}.out" in names
    assert "leak.txt" not in names
    result = next(f for f in listing["files"] if f["name"] == "result.txt")
    assert result["size"] == 10 and result["url"] == f"/api/slurm/jobs/{job_id}/files/result.txt"

    whole = daemon.get(result["url"], user="alice")
    assert whole.status_code == 200 and whole.content == b"0123456789"
    assert whole.headers["Accept-Ranges"] == "bytes"
    part = daemon.get(result["url"], user="alice", headers={"Range": "bytes=2-5"})
    assert part.status_code == 206 and part.content == b"2345"
    assert part.headers["Content-Range"] == "bytes 2-5/10"
    assert daemon.get(result["url"], user="alice", headers={"Range": "bytes=-3"}).content == b"789"
    outside = daemon.get(result["url"], user="alice", headers={"Range": "bytes=50-"})
    assert outside.status_code == 416 and outside.headers["Content-Range"] == "bytes */10"
    # A job cannot make the daemon read a file its user may not read.
    leak = daemon.get(f"/api/slurm/jobs/{job_id}/files/leak.txt", user="alice")
    assert leak.status_code == 409 and leak.json()["error"] == "unsafe_path"
    stderr = daemon.get(f"/api/slurm/jobs/{job_id}/output", user="alice", params={"stream": "stderr"})
    assert "root secret" not in stderr.text
    assert daemon.get(f"/api/slurm/jobs/{job_id}/files/..%2Fjobs", user="alice").status_code == 400


def test_partitions_and_associations(daemon_factory, shared_dir, slurm_conf, slurm_backend):
    from support.sifbuild import build_sif
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    build_sif(os.path.join(shared_dir.images, "viz", "paraview_5.11.sif"))
    wait_for(lambda: daemon.get("/api/v2/apptainer/images/paraview_5.11", user="alice").status_code == 200,
             message="the image")
    partitions = {p["name"]: p for p in daemon.get("/api/slurm/partitions", user="alice").json()["partitions"]}
    assert set(partitions) >= {"compute", "viz", "group1"}
    assert partitions["compute"]["default"] is True and partitions["viz"]["default"] is False
    assert partitions["compute"]["state"] == "UP" and partitions["compute"]["nodes"] == 1
    assert partitions["compute"]["cpus"] >= 64 and partitions["compute"]["memory_mb"] > 16 * 1024
    assert partitions["viz"]["images"] == ["paraview_5.11"] and partitions["compute"]["images"] == []
    associations = daemon.get("/api/slurm/associations", user="alice").json()
    # alice has no association: without slurmdbd the note says accounting is off, with it that she has none.
    assert associations["associations"] == []
    assert "accounting" in associations["note"] or "no Slurm associations" in associations["note"], associations
    metrics = daemon.get("/metrics").text
    # Through slurmrestd the partitions cost no sinfo.
    sinfo = 'hpcportal_slurm_calls_total{command="sinfo",outcome="ok"}'
    assert (sinfo in metrics) == (slurm_backend["backend"] == "cli")
    assert "hpcportal_squeue_cache_age_seconds" in metrics


def test_streams_end_after_their_time_limit_with_heartbeats(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, stream_max_duration="3s",
                                        stream_heartbeat="1s"))
    job_id = submit(daemon, "alice", "#!/bin/bash\necho started\nsleep 120\n")
    wait_for(lambda: output(daemon, "alice", job_id) == "started\n", message="the first line")
    headers = {**auth_headers("alice"), "Accept": "text/event-stream"}
    with requests.get(f"{daemon.url}/api/slurm/jobs/{job_id}/output", headers=headers, stream=True,
                      timeout=60) as answer:
        events = read_events(answer)
    assert [e.get("event") for e in events if e.get("event")] == ["output", "timeout"]
    assert json.loads(events[-1]["data"])["next_offset"] == len("started\n")
    assert any(e.get("comments") for e in events)  # heartbeats while nothing happened
    assert daemon.delete(f"/api/slurm/jobs/{job_id}", user="alice").status_code == 200
