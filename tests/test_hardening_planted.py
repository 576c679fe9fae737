"""Files a user plants in their own folders: FIFOs, sockets and swapped folders.

Every user has a shell account and write access to their own folder under the
uploads root. Whatever they put where the daemon expects its own plain file
or folder is refused at once (409 ``unsafe_path``, one log line, no
traceback), never waited on and never followed; background passes carry on;
and /readyz says so when a pass does not finish in time.
"""

import fcntl
import os
import socket
import sqlite3
import threading
import time

import pytest
import requests

from hpcportal.auth import User
from hpcportal.errors import UnsafePath
from hpcportal.jobs.folder import JobFolders
from hpcportal.passes import PassClock
from support.daemon import auth_headers
from support.slurm import jobs_config, slurm_conf, wait_finished  # noqa: F401
from support.uploads import SMALL, chunks_of, init, record_tus_cut_off, send_chunk, upload
from support.waiting import wait_for

ALICE = 2001
# A request that waits on a planted FIFO never answers: this bound turns a hang into a failure.
QUICK = 5
ONE_BACKEND = pytest.mark.databases("sqlite")


def plant(path, kind):
    """Replace ``path`` by a FIFO or a unix socket owned by alice, as her shell could."""
    if os.path.lexists(path):
        os.unlink(path)
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        bind_socket(path)
    os.lchown(path, ALICE, ALICE)


def bind_socket(path):
    """A unix socket file at ``path`` (it stays after the socket is closed). Bound
    by its name inside its folder: a socket's address is limited to 107 bytes."""
    here = os.getcwd()
    os.chdir(os.path.dirname(path))
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(os.path.basename(path))
    finally:
        os.chdir(here)


def assert_unsafe(answer):
    assert answer.status_code == 409, (answer.status_code, answer.text[:300])
    assert answer.json()["error"] == "unsafe_path", answer.text
    assert "Traceback" not in answer.text


def partial_path(shared_dir, upload_id):
    return os.path.join(shared_dir.uploads, "alice", "files", ".partial", upload_id)


# -- finished files and partial data -------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_fifo_or_socket_in_place_of_a_finished_file_is_refused_at_once(daemon_factory, kind):
    daemon = daemon_factory(config=SMALL)
    stored = upload(daemon, "alice", b"my data\n", filename="mine.txt")
    plant(stored["storage_path"], kind)
    answers = [daemon.get(f"/api/v2/files/{stored['file_id']}{suffix}", user="alice", timeout=QUICK)
               for suffix in ("/content", "/preview")]
    for answer in answers:
        assert_unsafe(answer)
    # The file row can still be deleted: the name is unlinked, nothing is opened.
    assert daemon.delete(f"/api/v2/files/{stored['file_id']}", user="alice", timeout=QUICK).status_code == 204
    assert not os.path.lexists(stored["storage_path"])
    daemon.stop()
    assert_logged_once(daemon.logs(), answers)


def assert_logged_once(logs, answers):
    """Each refusal is one warning line (with its request id), and no traceback."""
    assert "Traceback" not in logs
    for answer in answers:
        request_id = answer.headers["X-Request-ID"]
        refused = [line for line in logs.splitlines() if f"rid={request_id}" in line and "refused" in line]
        assert len(refused) == 1, (request_id, refused)


@ONE_BACKEND
def test_downloads_of_a_planted_fifo_leave_no_worker_waiting(daemon_factory):
    daemon = daemon_factory(config=SMALL)  # 8 worker threads
    stored = upload(daemon, "alice", b"my data\n", filename="trap.txt")
    plant(stored["storage_path"], "fifo")
    url = f"{daemon.url}/api/v2/files/{stored['file_id']}/content"
    answers = []

    def download():
        try:
            answers.append(requests.get(url, headers=auth_headers("alice"), timeout=QUICK))
        except requests.RequestException as exc:
            answers.append(exc)

    threads = [threading.Thread(target=download) for _ in range(12)]
    for thread in threads:
        thread.start()
    assert daemon.get("/healthz", timeout=1).status_code == 200
    for thread in threads:
        thread.join(2 * QUICK)
    assert len(answers) == 12
    for answer in answers:
        assert isinstance(answer, requests.Response), answer
        assert_unsafe(answer)
    assert daemon.get("/healthz", timeout=1).status_code == 200
    assert daemon.get("/readyz", timeout=QUICK).status_code == 200


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_fifo_or_socket_as_partial_data_is_refused_by_complete_and_chunks(daemon_factory,
                                                                           shared_dir, kind):
    daemon = daemon_factory(config=SMALL)
    data = os.urandom(3 * 1024)
    info = init(daemon, "alice", "parts.bin", len(data), chunk_size=1024).json()
    pieces = chunks_of(data, 1024)
    for index, piece in enumerate(pieces):
        assert send_chunk(daemon, "alice", info["upload_id"], index, piece).status_code == 200
    plant(partial_path(shared_dir, info["upload_id"]), kind)

    started = time.monotonic()
    assert_unsafe(daemon.post("/api/v2/files/upload/complete", user="alice",
                              json={"upload_id": info["upload_id"]}, timeout=QUICK))
    assert_unsafe(send_chunk(daemon, "alice", info["upload_id"], 0, pieces[0]))
    assert time.monotonic() - started < QUICK
    # Alice can still cancel: the planted name is removed, not opened.
    assert daemon.delete(f"/api/v2/files/upload/{info['upload_id']}", user="alice",
                         timeout=QUICK).status_code == 204
    assert not os.path.lexists(partial_path(shared_dir, info["upload_id"]))


@ONE_BACKEND
def test_the_clean_up_pass_carries_on_past_a_planted_fifo(daemon_factory, shared_dir):
    """A tus upload whose completion a crash cut off is finished by the clean-up
    pass, which opens its partial data: a FIFO there must not stop the pass."""
    daemon = daemon_factory(config={"uploads": {**SMALL["uploads"], "cleanup_interval": "0.2"}})
    headers = {"Tus-Resumable": "1.0.0", **auth_headers("alice")}
    created = requests.post(daemon.url + "/api/v2/files/tus", timeout=30, headers={
        **headers, "Upload-Length": "10", "Upload-Metadata": "filename dHVzLmJpbg=="})
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    url = daemon.url + location if location.startswith("/") else location
    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    sent = requests.patch(url, data=b"012345678", timeout=30, headers={
        **headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert sent.status_code == 204, sent.text
    daemon.kill()
    # Killed after its last byte was acknowledged, before the file was made; then
    # alice swaps the partial data for a FIFO.
    plant(partial_path(shared_dir, upload_id), "fifo")
    record_tus_cut_off(shared_dir, upload_id)
    daemon.start()

    wait_for(lambda: f"upload {upload_id} of alice: finishing its completion failed" in daemon.logs(),
             timeout=30, message="the clean-up pass to refuse the FIFO")
    # Later passes still come: an orphaned partial file is removed by one of them.
    orphan = os.path.join(os.path.dirname(partial_path(shared_dir, upload_id)), "0" * 32)
    with open(orphan, "wb") as handle:
        handle.write(b"left behind")
    os.utime(orphan, (time.time() - 48 * 3600, time.time() - 48 * 3600))
    wait_for(lambda: not os.path.exists(orphan), timeout=30, message="a later clean-up pass")
    ready = daemon.get("/readyz", timeout=QUICK)
    assert ready.status_code == 200 and ready.json()["checks"]["uploads_cleanup"]["ok"] is True
    # Logged once, not at every pass.
    assert daemon.logs().count(f"upload {upload_id} of alice: finishing its completion failed") == 1
    assert "Traceback" not in daemon.logs()


@ONE_BACKEND
def test_a_lock_a_user_holds_on_their_partial_data_holds_no_worker(daemon_factory, shared_dir):
    daemon = daemon_factory(config=SMALL)
    headers = {"Tus-Resumable": "1.0.0", **auth_headers("alice")}
    created = requests.post(daemon.url + "/api/v2/files/tus", timeout=30, headers={
        **headers, "Upload-Length": "8", "Upload-Metadata": "filename bG9jay5iaW4="})
    location = created.headers["Location"]
    url = daemon.url + location if location.startswith("/") else location
    upload_id = url.rstrip("/").rsplit("/", 1)[1]

    def patch(body, offset):
        return requests.patch(url, data=body, timeout=QUICK, headers={
            **headers, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})

    # Alice owns her partial file: she may lock it (fcntl, as every head does) and keep the lock.
    with open(partial_path(shared_dir, upload_id), "r+b") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)
        answers = [patch(b"0123", 0) for _ in range(10)]  # more than the 8 workers
        for answer in answers:
            assert answer.status_code == 409, answer.text
            assert answer.json()["error"] == "upload_locked" and answer.headers["Retry-After"]
        assert daemon.get("/healthz", timeout=1).status_code == 200
    assert patch(b"0123", 0).status_code == 204
    done = patch(b"4567", 4)
    assert done.status_code == 204 and done.headers["Upload-Offset"] == "8"


@pytest.mark.unit  # in process
def test_storage_refuses_a_fifo_without_waiting_on_it(tmp_path):
    """The open every reader of partial data goes through (chunks, completion,
    hashing ahead, the clean-up pass), on its own: FIFOs opened read-only would
    wait for a writer for ever."""
    from hpcportal.uploads.storage import Storage

    storage = Storage(str(tmp_path))
    owner = (os.getuid(), os.getgid())
    storage.create_partial("alice", owner, "u1")
    fifo = tmp_path / "alice" / "files" / ".partial" / "u1"
    fifo.unlink()
    os.mkfifo(fifo)
    outcome = []

    def read_partial():
        try:
            storage.open_partial("alice", owner, "u1", write=False)
        except UnsafePath as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read_partial, daemon=True)
    reader.start()
    reader.join(QUICK)
    if reader.is_alive():  # unblock the thread before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("opening a FIFO as partial data waited for a writer")
    assert outcome and outcome[0].code == "unsafe_path"


# -- job folders ---------------------------------------------------------------


JOBS = [pytest.mark.databases("sqlite"), pytest.mark.slurm]


def finished_job(daemon, script="#!/bin/bash\necho hello\necho oops >&2\nprintf 42 > result.txt\n"):
    answer = daemon.post("/api/slurm/jobs/submit", user="alice", json={"jobName": "plant", "script": script})
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["jobId"]
    finished = wait_finished(daemon, "alice", job_id)
    return job_id, finished


@pytest.mark.databases("sqlite")
@pytest.mark.slurm
def test_fifos_and_sockets_as_job_output_and_results_are_refused(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    job_id, job = finished_job(daemon)
    plant(job["stdout_path"], "fifo")
    plant(job["stderr_path"], "socket")
    plant(os.path.join(job["job_dir"], "result.txt"), "fifo")
    base = f"/api/slurm/jobs/{job_id}"
    for stream in ("stdout", "stderr"):
        assert_unsafe(daemon.get(f"{base}/output", user="alice", params={"stream": stream}, timeout=QUICK))
    for name in (os.path.basename(job["stdout_path"]), os.path.basename(job["stderr_path"]), "result.txt"):
        assert_unsafe(daemon.get(f"{base}/files/{name}", user="alice", timeout=QUICK))
    # A live stream has begun its answer: the refusal is its last event.
    streamed = requests.get(f"{daemon.url}{base}/output", timeout=QUICK,
                            headers={**auth_headers("alice"), "Accept": "text/event-stream"})
    assert streamed.status_code == 200
    assert "event: error" in streamed.text and '"error":"unsafe_path"' in streamed.text, streamed.text
    listed = daemon.get(f"{base}/files", user="alice", timeout=QUICK)
    assert listed.status_code == 200
    names = [f.get("name") or f.get("path") for f in listed.json()["files"]]
    assert "job.sbatch" in names and "result.txt" not in names, names
    assert daemon.get(base, user="alice", timeout=QUICK).status_code == 200
    assert daemon.get("/healthz", timeout=1).status_code == 200
    daemon.stop()
    assert "Traceback" not in daemon.logs()


@pytest.mark.databases("sqlite")
@pytest.mark.slurm
@pytest.mark.parametrize("swap", ["symlink to her other folder", "symlink to /etc", "fifo"])
def test_a_job_folder_swapped_by_its_user_answers_4xx_logged_once(daemon_factory, shared_dir, slurm_conf,
                                                                  tmp_path, swap):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    job_id, job = finished_job(daemon)
    folder = job["job_dir"]
    moved = os.path.join(os.path.dirname(folder), "moved-away")
    os.rename(folder, moved)
    if swap == "fifo":
        plant(folder, "fifo")
    else:
        os.symlink(moved if "her other" in swap else "/etc", folder)
        os.lchown(folder, ALICE, ALICE)

    base = f"/api/slurm/jobs/{job_id}"
    answers = [daemon.get(base, user="alice", timeout=QUICK),
               daemon.get(f"{base}/output", user="alice", timeout=QUICK),
               daemon.get(f"{base}/files", user="alice", timeout=QUICK),
               daemon.get(f"{base}/files/job.sbatch", user="alice", timeout=QUICK),
               daemon.get(f"{base}/files/passwd", user="alice", timeout=QUICK)]
    for answer in answers:
        assert_unsafe(answer)
        assert "root:x:0:0" not in answer.text
    cancel = daemon.delete(base, user="alice", timeout=QUICK)  # reaches Slurm only: the job has ended
    assert cancel.status_code == 409 and cancel.json()["error"] == "job_finished"
    daemon.stop()
    assert_logged_once(daemon.logs(), answers)


def _job_folders(tmp_path):
    root = tmp_path / "uploads"
    jobs = root / "alice" / "jobs"
    jobs.mkdir(parents=True)
    return JobFolders(str(root)), jobs


@pytest.mark.unit  # in process
def test_removing_a_job_folder_swapped_for_a_symlink_removes_the_link_only(tmp_path):
    folders, jobs = _job_folders(tmp_path)
    target = tmp_path / "precious"
    target.mkdir()
    (target / "data.txt").write_text("keep me\n")
    (jobs / ("a" * 32)).symlink_to(target)
    folders.remove("alice", "a" * 32)
    assert not os.path.lexists(jobs / ("a" * 32))
    assert (target / "data.txt").read_text() == "keep me\n"


@pytest.mark.unit  # in process
def test_removing_a_job_folder_never_follows_or_waits_on_what_it_holds(tmp_path):
    folders, jobs = _job_folders(tmp_path)
    target = tmp_path / "precious"
    (target / "inner").mkdir(parents=True)
    (target / "inner" / "data.txt").write_text("keep me\n")
    job = jobs / ("b" * 32)
    (job / "sub").mkdir(parents=True)
    (job / "out.txt").write_text("output\n")
    (job / "link").symlink_to(target)
    (job / "sub" / "link").symlink_to(target / "inner")
    os.mkfifo(job / "sub" / "fifo")
    bind_socket(str(job / "sock"))

    remover = threading.Thread(target=folders.remove, args=("alice", "b" * 32), daemon=True)
    remover.start()
    remover.join(QUICK)
    assert not remover.is_alive(), "removing a job folder waited on something in it"
    assert not os.path.lexists(job)
    assert (target / "inner" / "data.txt").read_text() == "keep me\n"


@pytest.mark.unit  # in process
def test_job_folders_refuse_a_swapped_folder_with_unsafe_path(tmp_path):
    folders, jobs = _job_folders(tmp_path)
    owner = User(name="alice", uid=os.getuid(), gid=os.getgid(), home=str(tmp_path))
    (jobs / ("c" * 32)).symlink_to("/etc")
    with pytest.raises(UnsafePath):
        folders.open_file(owner, "c" * 32, "passwd")
    with pytest.raises(UnsafePath):
        folders.open_dir(owner, "c" * 32)


# -- /readyz and background passes ---------------------------------------------


@pytest.mark.unit  # in process
def test_a_pass_clock_says_stale_after_three_intervals_and_its_margin():
    now = [100.0]
    passes = PassClock(interval=5, margin=10, clock=lambda: now[0])
    assert passes.overdue() is None  # not started
    passes.start()
    now[0] += 25
    assert passes.overdue() is None
    now[0] += 0.5
    assert passes.overdue().startswith("stale: no pass finished since start for 26s")
    passes.finished()
    assert passes.overdue() is None and passes.ago() == 0
    now[0] += 30
    assert "stale: no pass finished for 30s (expected within 25s)" == passes.overdue()


@ONE_BACKEND
def test_readyz_reports_a_clean_up_pass_that_does_not_finish(daemon_factory, shared_dir):
    """A pass held up for real: another process keeps the SQLite write lock while
    the pass has an expired upload to remove (it waits up to database.busy_timeout)."""
    daemon = daemon_factory(config={"uploads": {**SMALL["uploads"], "cleanup_interval": "0.2",
                                                "expire_after": "1s"},
                                    "database": {"busy_timeout": "60s"}})
    admin = auth_headers("alice", admin=True)  # the checks' details are for administrators

    def cleanup_check():
        answer = daemon.get("/readyz", headers=admin, timeout=QUICK)
        check = answer.json()["checks"]["uploads_cleanup"]
        return answer.status_code, check["ok"], check.get("detail", "")

    assert wait_for(lambda: cleanup_check()[1], timeout=10, message="a first clean-up pass")
    lock = sqlite3.connect(f"{shared_dir.state}/portal.db", isolation_level=None, timeout=30)
    try:
        info = init(daemon, "alice", "stale.bin", 10, chunk_size=1024).json()
        lock.execute("BEGIN EXCLUSIVE")
        status, ok, detail = wait_for(lambda: (lambda c: c if not c[1] else None)(cleanup_check()),
                                      timeout=40, message="readyz to report the stuck pass")
        assert status == 503 and detail.startswith("stale:"), detail
        assert daemon.get("/healthz", timeout=1).status_code == 200  # alive, only not ready
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    wait_for(lambda: cleanup_check()[:2] == (200, True), timeout=40, message="readyz ok once the pass ends")
    assert daemon.get(f"/api/v2/files/upload/{info['upload_id']}", user="alice").status_code == 404
