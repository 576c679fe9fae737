"""Fault injection against real daemons: kill -9 in the middle of work, a
vanishing image folder, a stopped Slurm controller, a locked database.

After each fault the invariants are the same: nothing acknowledged is lost,
no half state is visible (no file row without its file and no stored file
without its row, no job row without a Slurm job, no index row for a vanished
file), answers are documented statuses (503 with Retry-After while a backend
is down, never a 500), and work resumes by itself once the fault is gone.

Areas covered elsewhere are not repeated here: the uploads filesystem filling
up (tests/test_uploads_chunks.py::test_disk_full_is_507_and_the_upload_resumes),
a crash between sbatch and the database (tests/test_jobs_submit.py), a
database server going away (tests/test_multihead_database.py).
"""

import hashlib
import os
import random
import shutil
import socket
import sqlite3
import threading
import time
import urllib.parse

import pytest
import requests

from support.daemon import auth_headers
from support.sifbuild import build_sif
from support.slurm import controller, jobs_config, slurm_conf, squeue_comments, wait_for  # noqa: F401
from support.uploads import SMALL, chunks_of, complete, init, record_tus_cut_off, send_chunk, sha256

SUBMIT = "/api/slurm/jobs/submit"
ONE_BACKEND = pytest.mark.databases("sqlite")


def upload_status(daemon, user, upload_id):
    return daemon.get(f"/api/v2/files/upload/{upload_id}", user=user)


def files_of(daemon, user):
    answer = daemon.get("/api/v2/files", user=user, params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    return answer.json()["files"]


def stored_files(uploads_root, user):
    """Finished files on disk (the .partial folder left out)."""
    found = []
    root = os.path.join(uploads_root, user, "files")
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".partial"]
        found += [os.path.join(folder, name) for name in names]
    return sorted(found)


def assert_files_consistent(daemon, user, uploads_root):
    """Every file row has its file with the right content, and no file lacks a row."""
    rows = files_of(daemon, user)
    for row in rows:
        with open(row["storage_path"], "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == row["sha256"], row
    assert sorted(row["storage_path"] for row in rows) == stored_files(uploads_root, user)
    return rows


def send_partial_chunk(daemon, user, upload_id, index, body, sent):
    """Starts a chunk request and sends only ``sent`` bytes of its body; the socket stays open."""
    query = urllib.parse.urlencode({"upload_id": upload_id, "chunk_index": index})
    head = (f"POST /api/v2/files/upload/chunk?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {auth_headers(user)['Authorization']}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n")
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
    sock.sendall(head.encode() + body[:sent])
    return sock


# -- uploads -----------------------------------------------------------------


@ONE_BACKEND
def test_kill_9_in_the_middle_of_a_chunk_keeps_what_was_acknowledged(daemon_factory, shared_dir):
    daemon = daemon_factory(config=SMALL)
    data = os.urandom(64 * 1024)
    pieces = chunks_of(data, 16 * 1024)
    info = init(daemon, "alice", "mid-chunk.bin", len(data), chunk_size=16 * 1024,
                sha256=sha256(data)).json()
    upload_id = info["upload_id"]
    for index in (0, 2):
        assert send_chunk(daemon, "alice", upload_id, index, pieces[index]).status_code == 200
    # Half of chunk 1 and (on another connection) most of chunk 3 are on the wire.
    open_sockets = [send_partial_chunk(daemon, "alice", upload_id, 1, pieces[1], 8 * 1024),
                    send_partial_chunk(daemon, "alice", upload_id, 3, pieces[3], 16 * 1024 - 1)]
    time.sleep(0.3)
    daemon.kill()
    for sock in open_sockets:
        sock.close()

    daemon.start()
    state = upload_status(daemon, "alice", upload_id).json()
    assert state["received_chunks"] == [0, 2]
    assert state["received_bytes"] == 2 * 16 * 1024
    for index in (1, 3):
        assert send_chunk(daemon, "alice", upload_id, index, pieces[index]).status_code == 200
    done = complete(daemon, "alice", upload_id)
    assert done.status_code == 200, done.text
    assert done.json()["sha256"] == sha256(data)
    assert_files_consistent(daemon, "alice", shared_dir.uploads)


@ONE_BACKEND
def test_kill_9_during_complete_leaves_a_file_or_a_completable_upload(daemon_factory, shared_dir):
    config = {"uploads": {"min_chunk_size": "1KiB", "chunk_size": "256KiB", "max_chunk_size": "1MiB",
                          "free_space_reserve": 0}}
    daemon = daemon_factory(config=config)
    randomness = random.Random(9)
    uploads = []
    for number in range(5):
        data = os.urandom(2 * 1024 * 1024 + number)
        info = init(daemon, "alice", f"complete-{number}.bin", len(data), chunk_size=256 * 1024,
                    sha256=sha256(data)).json()
        for index, piece in enumerate(chunks_of(data, 256 * 1024)):
            assert send_chunk(daemon, "alice", info["upload_id"], index, piece).status_code == 200
        uploads.append((info["upload_id"], data))

    for upload_id, data in uploads:
        answers = []

        def complete_in_background(upload_id=upload_id, answers=answers):
            try:
                answers.append(complete(daemon, "alice", upload_id))
            except requests.RequestException:  # refused, or cut off mid-answer
                answers.append(None)

        worker = threading.Thread(target=complete_in_background)
        worker.start()
        time.sleep(randomness.uniform(0, 0.03))
        daemon.kill()
        worker.join(30)
        daemon.start()

        acknowledged = answers and answers[0] is not None and answers[0].status_code == 200
        state = upload_status(daemon, "alice", upload_id)
        listed = [f for f in files_of(daemon, "alice") if f["sha256"] == sha256(data)]
        if state.status_code == 404:
            assert len(listed) == 1, listed  # completed before the kill
        else:
            assert not acknowledged, "an acknowledged completion was lost"
            assert state.json()["received_bytes"] == len(data)
            assert listed == []
            # Even when killed holding the completion lease: the restarted daemon
            # frees what its predecessor held, so the retry needs no waiting.
            done = complete(daemon, "alice", upload_id)
            assert done.status_code == 200, done.text
        assert_files_consistent(daemon, "alice", shared_dir.uploads)

    rows = assert_files_consistent(daemon, "alice", shared_dir.uploads)
    assert sorted(r["sha256"] for r in rows) == sorted(sha256(d) for _, d in uploads)


def interrupt_completion(daemon, shared_dir, upload_id, holder, lease_seconds, name):
    """Leaves an upload exactly as a completion killed after linking its data
    into place leaves it: leased to ``holder``, its data already under ``name``."""
    partial = os.path.join(shared_dir.uploads, "alice", "files", ".partial", upload_id)
    placed = os.path.join(shared_dir.uploads, "alice", "files", "unlinked", name)
    os.makedirs(os.path.dirname(placed), exist_ok=True)
    os.link(partial, placed)
    lease_until = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + lease_seconds))
    with sqlite3.connect(f"{shared_dir.state}/portal.db") as conn:
        conn.execute("UPDATE upload SET state = 'completing', lease_until = ?, lease_holder = ?,"
                     " final_name = ? WHERE id = ?", (lease_until, holder, name, upload_id))
    return placed


def uploaded(daemon, name, data):
    info = init(daemon, "alice", name, len(data), chunk_size=16 * 1024, sha256=sha256(data)).json()
    for index, piece in enumerate(chunks_of(data, 16 * 1024)):
        assert send_chunk(daemon, "alice", info["upload_id"], index, piece).status_code == 200
    return info["upload_id"]


@ONE_BACKEND
def test_a_restarted_daemon_completes_what_its_killed_predecessor_left_half_done(daemon_factory,
                                                                                 shared_dir):
    daemon = daemon_factory(config=SMALL)
    data = os.urandom(40 * 1024)
    upload_id = uploaded(daemon, "results.bin", data)
    daemon.kill()
    predecessor = f"{socket.gethostname()}/127.0.0.1:{daemon.port}#0123456789ab"
    placed = interrupt_completion(daemon, shared_dir, upload_id, predecessor, 120, "results.bin")
    daemon.start()

    done = complete(daemon, "alice", upload_id)
    assert done.status_code == 200, done.text
    assert done.json()["storage_path"] == placed  # the name it already had, not "results (1).bin"
    assert done.json()["sha256"] == sha256(data)
    assert_files_consistent(daemon, "alice", shared_dir.uploads)
    assert f"released the completion lease of a previous run ({predecessor})" in daemon.logs()


@ONE_BACKEND
def test_another_heads_completion_lease_is_respected_until_it_runs_out(daemon_factory, shared_dir):
    daemon = daemon_factory(config=SMALL)
    upload_id = uploaded(daemon, "shared.bin", os.urandom(40 * 1024))
    daemon.kill()
    other_head = f"head2.cluster/0.0.0.0:{daemon.port}#0123456789ab"
    interrupt_completion(daemon, shared_dir, upload_id, other_head, 120, "shared.bin")
    daemon.start()

    busy = complete(daemon, "alice", upload_id)
    assert busy.status_code == 409, busy.text
    assert busy.json()["error"] == "upload_completing"
    cancel = daemon.delete(f"/api/v2/files/upload/{upload_id}", user="alice")
    assert cancel.status_code == 409 and cancel.json()["error"] == "upload_completing"


@ONE_BACKEND
def test_cancelling_an_interrupted_completion_removes_the_data_it_had_linked(daemon_factory,
                                                                           shared_dir):
    daemon = daemon_factory(config=SMALL)
    upload_id = uploaded(daemon, "abandoned.bin", os.urandom(40 * 1024))
    kept = uploaded(daemon, "kept.bin", os.urandom(20 * 1024))
    assert complete(daemon, "alice", kept).status_code == 200
    daemon.kill()
    # A head that died mid-completion long ago; its lease has run out.
    placed = interrupt_completion(daemon, shared_dir, upload_id, "head2.cluster/0.0.0.0:5000#ab",
                                  -60, "abandoned.bin")
    daemon.start()

    assert daemon.delete(f"/api/v2/files/upload/{upload_id}", user="alice").status_code == 204
    assert not os.path.exists(placed)
    rows = assert_files_consistent(daemon, "alice", shared_dir.uploads)
    assert [row["filename"] for row in rows] == ["kept.bin"]


@ONE_BACKEND
def test_a_tus_upload_cut_off_after_its_last_byte_still_becomes_a_file(daemon_factory, shared_dir):
    daemon = daemon_factory(config=SMALL)
    data = os.urandom(30 * 1024)
    headers = {"Tus-Resumable": "1.0.0", **auth_headers("alice")}
    created = requests.post(daemon.url + "/api/v2/files/tus", timeout=30, headers={
        **headers, "Upload-Length": str(len(data)), "Upload-Metadata": "filename dHVzLmJpbg=="})
    url = daemon.url + created.headers["Location"] if created.headers["Location"].startswith("/") \
        else created.headers["Location"]
    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    sent = requests.patch(url, data=data[:-1], timeout=30, headers={
        **headers, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"})
    assert sent.status_code == 204, sent.text
    daemon.kill()
    # Killed after the last PATCH committed its offset, before the file was made:
    # the client saw Upload-Offset reach Upload-Length and will not come back.
    with open(os.path.join(shared_dir.uploads, "alice", "files", ".partial", upload_id), "ab") as f:
        f.write(data[-1:])
    record_tus_cut_off(shared_dir, upload_id)
    daemon.start()

    wait_for(lambda: [f["filename"] for f in files_of(daemon, "alice")] == ["tus.bin"],
             message="the cut-off tus upload finished by the clean-up pass")
    rows = assert_files_consistent(daemon, "alice", shared_dir.uploads)
    assert rows[0]["sha256"] == sha256(data)
    assert head_offset(daemon, url) == str(len(data))


def head_offset(daemon, url):
    answer = requests.head(url, timeout=10, headers={"Tus-Resumable": "1.0.0", **auth_headers("alice")})
    assert answer.status_code == 200
    return answer.headers["Upload-Offset"]


# -- the image catalog -------------------------------------------------------


def image_names(daemon):
    answer = daemon.get("/api/v2/apptainer/images", user="alice", admin=True,
                        params={"include_invalid": "true", "limit": 1000})
    assert answer.status_code == 200, answer.text
    return sorted(image["name"] for image in answer.json()["images"])


def files_in(images_root):
    return sorted(name for folder in ("compute", "viz")
                  for name in os.listdir(os.path.join(images_root, folder)) if name.endswith(".sif"))


@ONE_BACKEND
def test_kill_9_during_a_scan_leaves_an_index_matching_the_folder(daemon_factory, shared_dir,
                                                                   tmp_path):
    source = build_sif(str(tmp_path / "base.sif"))
    for number in range(120):
        shutil.copyfile(source, os.path.join(shared_dir.images, ("compute", "viz")[number % 2],
                                             f"img{number:03d}.sif"))
    daemon = daemon_factory(config={"catalog": {"settle_seconds": 0}})
    wait_for(lambda: len(image_names(daemon)) == 120, message="120 images indexed")

    # Every file changes (a new content, so each must be read again), then a scan is killed.
    other = build_sif(str(tmp_path / "other.sif"), labels={"version": "2"})
    for name in files_in(shared_dir.images):
        folder = "compute" if int(name[3:6]) % 2 == 0 else "viz"
        shutil.copyfile(other, os.path.join(shared_dir.images, folder, name))
    scan = threading.Thread(target=lambda: _ignore_connection_errors(
        lambda: daemon.post("/api/v2/apptainer/scan", user="alice", admin=True)))
    scan.start()
    time.sleep(0.15)
    daemon.kill()
    scan.join(30)

    # While it is down some files go, some come.
    for number in range(0, 120, 4):
        os.remove(os.path.join(shared_dir.images, ("compute", "viz")[number % 2], f"img{number:03d}.sif"))
    for number in range(200, 210):
        shutil.copyfile(source, os.path.join(shared_dir.images, "compute", f"img{number:03d}.sif"))
    daemon.start()
    wait_for(lambda: image_names(daemon) == files_in(shared_dir.images), timeout=90,
             message="the index to match the folder")
    answer = daemon.get("/api/v2/apptainer/images", user="alice", params={"limit": 1000}).json()
    ids = [image["id"] for image in answer["images"]]
    assert len(ids) == len(set(ids)) == len(files_in(shared_dir.images))


def _ignore_connection_errors(call):
    try:
        return call()
    except requests.ConnectionError:
        return None


@ONE_BACKEND
def test_image_folder_gone_then_back_watcher_survives_and_readyz_says_why(daemon_factory,
                                                                          shared_dir, tmp_path):
    source = build_sif(str(tmp_path / "base.sif"))
    shutil.copyfile(source, os.path.join(shared_dir.images, "compute", "before.sif"))
    daemon = daemon_factory(config={"catalog": {"settle_seconds": 0.2}})
    wait_for(lambda: image_names(daemon) == ["before.sif"], message="the first image")

    away = shared_dir.images + ".away"
    os.rename(shared_dir.images, away)  # an unmounted or renamed share

    def catalog_detail():
        return daemon.get("/readyz", user="alice", admin=True).json()["checks"]["catalog"]["detail"]

    wait_for(lambda: "missing" in catalog_detail(), message="readyz to say the folder is missing")
    # Still serving what it knew; a vanished share is not a deletion of every image.
    assert image_names(daemon) == ["before.sif"]
    assert daemon.post("/api/v2/apptainer/scan", user="alice", admin=True).status_code == 200

    with open(shared_dir.images, "w") as handle:  # something else where the folder was
        handle.write("not a folder")
    # Positive signal: a scan has looked at the file where the folder was, and kept the index.
    assert daemon.post("/api/v2/apptainer/scan", user="alice", admin=True).status_code == 200
    wait_for(lambda: "is not a folder now; the index is kept" in daemon.logs(), timeout=30,
             message="the scan to find a file where the folder was")
    assert daemon.get("/healthz").status_code == 200
    assert image_names(daemon) == ["before.sif"]
    os.remove(shared_dir.images)

    os.rename(away, shared_dir.images)
    shutil.copyfile(source, os.path.join(shared_dir.images, "viz", "after.sif"))
    os.remove(os.path.join(shared_dir.images, "compute", "before.sif"))
    wait_for(lambda: image_names(daemon) == ["after.sif"], timeout=60, message="indexing to resume")
    assert "missing" not in catalog_detail()
    assert "Traceback" not in daemon.logs()


# -- Slurm -------------------------------------------------------------------


def slurm_jobs_by_comment(conf):
    return {comment: job for job, comment in squeue_comments(conf).items()
            if comment.startswith("hpcportal:")}


@ONE_BACKEND
def test_controller_stopped_and_back_during_a_stream_of_submissions(daemon_factory, shared_dir,
                                                                    slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, command_timeout="30s"))
    answers = []
    stop = threading.Event()

    def submitter(user):
        while not stop.is_set():
            answer = daemon.post(SUBMIT, user=user, timeout=90, json={
                "jobName": "stream", "partition": "compute", "time": "00:01:00",
                "script": "#!/bin/bash\ntrue\n"})
            answers.append((user, answer.status_code, answer.json(), dict(answer.headers)))
            time.sleep(0.1)

    workers = [threading.Thread(target=submitter, args=(user,)) for user in ("alice", "bob")]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: sum(1 for a in answers if a[1] == 200) >= 4, message="submissions")
        controller(slurm_conf, "stop")  # the real slurmctld; slurmd and running jobs stay
        try:
            before = len(answers)
            wait_for(lambda: any(a[1] == 503 for a in answers[before:]), timeout=120,
                     message="a 503 while the controller is away")
            wait_for(lambda: sum(1 for a in answers[before:] if a[1] == 503) >= 3, timeout=180,
                     message="more refusals")
        finally:
            controller(slurm_conf, "start")
        after = len(answers)
        wait_for(lambda: sum(1 for a in answers[after:] if a[1] == 200) >= 4, timeout=120,
                 message="submissions to succeed again")
    finally:
        stop.set()
        for worker in workers:
            worker.join(120)

    statuses = {status for _, status, _, _ in answers}
    assert statuses <= {200, 503}, [a for a in answers if a[1] not in (200, 503)][:3]
    for user, status, body, headers in answers:
        if status == 503:
            assert body["success"] is False and int(headers["Retry-After"]) >= 1
            assert "Slurm" in body["message"]
    accepted = {(user, body["jobId"], body["submissionId"])
                for user, status, body, _ in answers if status == 200}
    in_slurm = slurm_jobs_by_comment(slurm_conf)
    for user, job_id, submission in accepted:
        assert in_slurm.get(f"hpcportal:{submission}") == job_id, (user, job_id)

    def listed():
        rows = set()
        for user in ("alice", "bob"):
            answer = daemon.get("/api/slurm/jobs", user=user, params={"limit": 1000})
            assert answer.status_code == 200, answer.text
            rows |= {(user, j["jobId"], j["submissionId"]) for j in answer.json()["jobs"]}
        return rows

    # Once the monitor has looked (slurm.poll_interval 1 s), the portal lists exactly
    # what Slurm accepted: no row without a Slurm job, no accepted job missing.
    wait_for(lambda: listed() == accepted, timeout=90, message="the list to match what Slurm accepted")
    assert "Traceback" not in daemon.logs()


@ONE_BACKEND
def test_kill_9_during_submissions_leaves_no_job_without_a_slurm_job(daemon_factory, shared_dir,
                                                                     slurm_conf):
    config = jobs_config(shared_dir, slurm_conf)
    daemon = daemon_factory(config)
    answers = []

    def submitter(user):
        for _ in range(30):
            try:
                answer = daemon.post(SUBMIT, user=user, timeout=60, json={
                    "jobName": "killed", "partition": "compute", "time": "00:01:00",
                    "script": "#!/bin/bash\ntrue\n"})
            except requests.RequestException:  # refused, or cut off mid-answer: not acknowledged
                return
            answers.append((user, answer.status_code, answer.json()))

    workers = [threading.Thread(target=submitter, args=(user,)) for user in ("alice", "bob", "alice")]
    for worker in workers:
        worker.start()
    wait_for(lambda: len(answers) >= 5, message="some submissions")
    daemon.kill()
    for worker in workers:
        worker.join(60)
    daemon.start()

    assert {status for _, status, _ in answers} == {200}
    acknowledged = {(user, body["jobId"]) for user, _, body in answers}
    in_slurm = slurm_jobs_by_comment(slurm_conf)

    def listed():
        rows = {}
        for user in ("alice", "bob"):
            answer = daemon.get("/api/slurm/jobs", user=user, params={"limit": 1000})
            rows.update({(user, j["jobId"]): j for j in answer.json()["jobs"]})
        return rows

    def settled():
        rows = listed()
        return rows if all(row["jobId"] for row in rows.values()) else None

    rows = wait_for(settled, timeout=90, message="lost submissions to be settled")
    assert acknowledged <= set(rows), "an acknowledged submission was lost"
    for (user, job_id), row in rows.items():
        assert in_slurm.get(f"hpcportal:{row['submissionId']}") == job_id, row


# -- the database ------------------------------------------------------------


@ONE_BACKEND
def test_locked_database_answers_503_with_retry_after_then_recovers(daemon_factory, shared_dir):
    daemon = daemon_factory(config={"database": {"busy_timeout": "1s"}, **SMALL})
    assert init(daemon, "alice", "before.txt", 3).status_code == 201
    holder = sqlite3.connect(os.path.join(shared_dir.state, "portal.db"), timeout=30,
                             isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        locked = init(daemon, "alice", "during.txt", 3)
        assert locked.status_code == 503, locked.text
        assert locked.json()["error"] == "database_unavailable"
        assert int(locked.headers["Retry-After"]) >= 1
        # Reads go on (WAL): the catalog and the API document still answer.
        assert daemon.get("/api/v2/apptainer/images", user="alice").status_code == 200
        assert daemon.get("/healthz").status_code == 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    after = init(daemon, "alice", "after.txt", 3)
    assert after.status_code == 201, after.text
    assert "Traceback" not in daemon.logs()
