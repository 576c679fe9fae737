"""The dashboard's chunk protocol against real daemons."""

import hashlib
import io
import linecache
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time

import pytest
import requests

from hpcportal.uploads.storage import Storage
from support.uploads import (SMALL, chunks_of, complete, drops_cached_pages, init, random_bytes, resident_pages,
                             send_chunk, sha256, upload)
from support.waiting import wait_for


@pytest.fixture
def small(daemon_factory):
    return daemon_factory(config=SMALL)


def status(daemon, user, upload_id):
    return daemon.get(f"/api/v2/files/upload/{upload_id}", user=user)


def test_multi_chunk_upload_with_whole_file_checksum(small, shared_dir):
    data = random_bytes(3 * 4096 + 100)
    started = init(small, "alice", "mesh.msh", len(data), chunk_size=4096, sha256=sha256(data),
                   job_id="tmp-1234567890")
    assert started.status_code == 201
    info = started.json()
    assert info["chunk_size"] == 4096 and info["total_chunks"] == 4
    assert info["received_chunks"] == [] and info["expires_at"].endswith("Z")
    for index, piece in enumerate(chunks_of(data, 4096)):
        answer = send_chunk(small, "alice", info["upload_id"], index, piece,
                            multipart=index % 2 == 0, chunk_sha256=sha256(piece))
        assert answer.status_code == 200, answer.text
        assert answer.json()["received_chunks"] == list(range(index + 1))
    assert answer.json()["received_bytes"] == len(data)
    done = complete(small, "alice", info["upload_id"])
    assert done.status_code == 200, done.text
    result = done.json()
    path = os.path.join(shared_dir.uploads, "alice", "files", "tmp-1234567890", "mesh.msh")
    assert result["sha256"] == sha256(data) and result["size"] == len(data)
    assert result["storage_path"] == path and result["job_id"] == "tmp-1234567890"
    assert result["file_type"] == "mesh"
    with open(path, "rb") as handle:
        assert handle.read() == data
    st = os.stat(path)
    assert (st.st_uid, st.st_mode & 0o777) == (2001, 0o640)
    folder = os.stat(os.path.dirname(path))
    assert (folder.st_uid, folder.st_mode & 0o777) == (2001, 0o750)
    assert os.listdir(os.path.join(shared_dir.uploads, "alice", "files", ".partial")) == []
    # Completing again (a retry after a lost answer) gives the same file.
    assert complete(small, "alice", info["upload_id"]).json() == result
    assert status(small, "alice", info["upload_id"]).status_code == 404


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_chunk_size_is_agreed_within_bounds(small):
    assert init(small, "alice", "a", 10, chunk_size=2048).json()["chunk_size"] == 2048
    assert init(small, "alice", "a", 10, chunk_size=10).json()["chunk_size"] == 64 * 1024
    assert init(small, "alice", "a", 10, chunk_size=10 ** 9).json()["chunk_size"] == 64 * 1024
    default = init(small, "alice", "a", 200 * 1024).json()
    assert (default["chunk_size"], default["total_chunks"]) == (64 * 1024, 4)


def test_out_of_order_and_resent_chunks(small):
    data = random_bytes(5 * 1024 + 7)
    info = init(small, "alice", "notes.txt", len(data), chunk_size=1024, sha256=sha256(data)).json()
    pieces = chunks_of(data, 1024)
    for index in (5, 2, 0, 2, 4, 1, 3, 0):
        answer = send_chunk(small, "alice", info["upload_id"], index, pieces[index])
        assert answer.status_code == 200, answer.text
    state = status(small, "alice", info["upload_id"]).json()
    assert state["received_chunks"] == [0, 1, 2, 3, 4, 5]
    assert state["received_bytes"] == len(data)
    assert complete(small, "alice", info["upload_id"]).json()["sha256"] == sha256(data)


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_wrong_chunks_are_refused_and_not_recorded(small):
    data = random_bytes(3000)
    info = init(small, "alice", "x.bin", len(data), chunk_size=1024).json()
    uid = info["upload_id"]
    short = send_chunk(small, "alice", uid, 0, data[:1000])
    assert short.status_code == 400 and "1024" in short.json()["message"]
    long_multipart = send_chunk(small, "alice", uid, 0, data[:1025], multipart=True)
    assert long_multipart.status_code == 400
    assert send_chunk(small, "alice", uid, 3, data[:1024]).status_code == 400
    bad_sum = send_chunk(small, "alice", uid, 1, data[1024:2048], multipart=True,
                         chunk_sha256=sha256(b"other"))
    assert bad_sum.status_code == 400 and bad_sum.json()["error"] == "checksum_mismatch"
    assert status(small, "alice", uid).json()["received_chunks"] == []
    missing = complete(small, "alice", uid)
    assert missing.status_code == 409 and missing.json()["missing_chunks"] == [0, 1, 2]
    # The last chunk is the remainder.
    assert send_chunk(small, "alice", uid, 2, data[2048:]).status_code == 200
    assert complete(small, "alice", uid).json()["missing_chunks"] == [0, 1]


def test_whole_file_mismatch_is_422_and_the_upload_can_be_fixed(small):
    data = random_bytes(2048)
    info = init(small, "alice", "y.bin", 2048, chunk_size=1024, sha256=sha256(data)).json()
    uid = info["upload_id"]
    send_chunk(small, "alice", uid, 0, data[:1024])
    send_chunk(small, "alice", uid, 1, b"\0" * 1024)
    wrong = complete(small, "alice", uid)
    assert wrong.status_code == 422 and wrong.json()["sha256"] != sha256(data)
    assert send_chunk(small, "alice", uid, 1, data[1024:]).status_code == 200
    assert complete(small, "alice", uid).json()["sha256"] == sha256(data)


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_fields_after_the_file_part_are_accepted(small):
    data = random_bytes(1500)
    info = init(small, "alice", "late.bin", 1500, chunk_size=1024).json()
    boundary = "xyzzy"

    def field(name, value):
        return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n").encode()

    for index, piece in enumerate(chunks_of(data, 1024)):
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"chunk\"; filename=\"b\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + piece + b"\r\n"
        body += field("upload_id", info["upload_id"]) + field("chunk_index", index)
        body += field("chunk_sha256", sha256(piece)) + f"--{boundary}--\r\n".encode()
        answer = small.post("/api/v2/files/upload/chunk", user="alice", data=body,
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert answer.status_code == 200, answer.text
    assert complete(small, "alice", info["upload_id"]).json()["sha256"] == sha256(data)


def test_resume_after_kill_9(daemon_factory):
    daemon = daemon_factory(config=SMALL)
    data = random_bytes(8 * 1024)
    info = init(daemon, "alice", "big.dat", len(data), chunk_size=1024, sha256=sha256(data)).json()
    pieces = chunks_of(data, 1024)
    for index in range(5):
        assert send_chunk(daemon, "alice", info["upload_id"], index, pieces[index]).status_code == 200
    daemon.kill()
    daemon.start()
    state = status(daemon, "alice", info["upload_id"]).json()
    assert state["received_chunks"] == [0, 1, 2, 3, 4]
    for index in range(5, 8):
        assert send_chunk(daemon, "alice", info["upload_id"], index, pieces[index]).status_code == 200
    result = complete(daemon, "alice", info["upload_id"]).json()
    assert result["sha256"] == sha256(data)


def test_two_daemons_share_one_upload(daemon_factory, shared_dir):
    first = daemon_factory(config=SMALL)
    second = daemon_factory(config=SMALL)
    data = random_bytes(10 * 1024 + 1)
    info = init(first, "alice", "shared.bin", len(data), chunk_size=1024, sha256=sha256(data)).json()
    for index, piece in enumerate(chunks_of(data, 1024)):
        head = (first, second)[index % 2]
        assert send_chunk(head, "alice", info["upload_id"], index, piece).status_code == 200
    assert status(first, "alice", info["upload_id"]).json()["received_bytes"] == len(data)
    result = complete(second, "alice", info["upload_id"]).json()
    assert result["sha256"] == sha256(data)
    assert first.get(f"/api/v2/files/{result['file_id']}", user="alice").json() == result


def test_concurrent_chunks_from_two_daemons(daemon_factory):
    import concurrent.futures
    first = daemon_factory(config=SMALL)
    second = daemon_factory(config=SMALL)
    data = random_bytes(16 * 1024)
    info = init(first, "alice", "race.bin", len(data), chunk_size=1024, sha256=sha256(data)).json()
    pieces = chunks_of(data, 1024)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda i: send_chunk((first, second)[i % 2], "alice", info["upload_id"], i, pieces[i]),
            range(len(pieces))))
    assert all(a.status_code == 200 for a in answers)
    assert status(second, "alice", info["upload_id"]).json()["received_chunks"] == list(range(16))
    assert complete(first, "alice", info["upload_id"]).json()["sha256"] == sha256(data)


def test_cancel_removes_partial_data(small, shared_dir):
    info = init(small, "alice", "gone.bin", 4096, chunk_size=1024).json()
    send_chunk(small, "alice", info["upload_id"], 0, b"a" * 1024)
    partial = os.path.join(shared_dir.uploads, "alice", "files", ".partial", info["upload_id"])
    assert os.path.exists(partial)
    assert small.delete(f"/api/v2/files/upload/{info['upload_id']}", user="alice").status_code == 204
    assert not os.path.exists(partial)
    assert status(small, "alice", info["upload_id"]).status_code == 404
    assert small.delete(f"/api/v2/files/upload/{info['upload_id']}", user="alice").status_code == 404


def test_expired_uploads_and_old_files_are_cleaned_up(daemon_factory, shared_dir):
    daemon = daemon_factory(config={"uploads": {**SMALL["uploads"], "expire_after": "1s",
                                                "cleanup_interval": "0.2", "retention_days": 2e-5}})
    info = init(daemon, "alice", "stale.bin", 4096, chunk_size=1024).json()
    partial = os.path.join(shared_dir.uploads, "alice", "files", ".partial", info["upload_id"])
    orphan = os.path.join(os.path.dirname(partial), "0" * 32)  # a partial file without a row
    with open(orphan, "wb") as handle:
        handle.write(b"left behind by a crash")
    os.utime(orphan, (time.time() - 60, time.time() - 60))
    wait_for(lambda: status(daemon, "alice", info["upload_id"]).status_code == 404, timeout=20,
             message="the expired upload removed")
    assert not os.path.exists(partial)
    wait_for(lambda: not os.path.exists(orphan), timeout=20, message="the orphaned part file removed")
    result = upload(daemon, "alice", b"old data\n", filename="old.txt", chunk_size=1024)
    wait_for(lambda: daemon.get(f"/api/v2/files/{result['file_id']}", user="alice").status_code == 404,
             timeout=20, message="the file past retention removed")
    assert not os.path.exists(result["storage_path"])
    metrics = daemon.get("/metrics").text
    assert "hpcportal_uploads_expired_total 1.0" in metrics
    assert "hpcportal_upload_files_retention_removed_total 1.0" in metrics
    assert daemon.get("/readyz").json()["checks"]["uploads_cleanup"]["ok"] is True


def test_size_limit_quota_and_active_uploads(daemon_factory):
    daemon = daemon_factory(config={"uploads": {**SMALL["uploads"], "max_size": "10KiB",
                                                "user_quota": "12KiB", "max_active_per_user": 2}})
    too_big = init(daemon, "alice", "huge.bin", 10 * 1024 + 1)
    assert too_big.status_code == 413 and too_big.json()["error"] == "file_too_large"
    upload(daemon, "alice", random_bytes(8 * 1024), chunk_size=1024)
    over_quota = init(daemon, "alice", "more.bin", 5 * 1024)
    assert over_quota.status_code == 413 and over_quota.json()["error"] == "quota_exceeded"
    assert init(daemon, "bob", "a.bin", 1).status_code == 201
    assert init(daemon, "bob", "b.bin", 1).status_code == 201
    third = init(daemon, "bob", "c.bin", 1)
    assert third.status_code == 429 and third.json()["error"] == "too_many_uploads"


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_not_enough_free_space_is_507(daemon_factory):
    daemon = daemon_factory(config={"uploads": {**SMALL["uploads"], "free_space_reserve": "1000TiB"}})
    answer = init(daemon, "alice", "a.bin", 10)
    assert answer.status_code == 507 and answer.json()["error"] == "insufficient_storage"


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_checks_come_in_order(daemon_factory):
    daemon = daemon_factory(config={"uploads": {**SMALL["uploads"], "max_size": "1KiB",
                                                "free_space_reserve": "1000TiB"}})
    assert init(daemon, "alice", "../bad", 10 ** 6).status_code == 400
    assert init(daemon, "alice", "good", 10 ** 6).status_code == 413
    assert init(daemon, "alice", "good", 10).status_code == 507


BAD_NAMES = [
    ("", "empty"), ("../etc/passwd", "'/'"), ("a/b", "'/'"), ("a\\b", "'\\'"),
    ("a\x00b", "NUL"), ("a\x07b", "control"), ("line\nbreak", "control"),
    ("x" * 256, "255 bytes"), ("é" * 128, "255 bytes"), (".", "dots"), ("..", "dots"),
    ("...", "dots"), (" padded", "white space"),
]


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_bad_names_are_refused_saying_why(small):
    for name, reason in BAD_NAMES:
        answer = init(small, "alice", name, 10)
        assert answer.status_code == 400, (name, answer.text)
        assert reason in answer.json()["errors"]["filename"], name
        assert reason in answer.json()["message"], name


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_bad_job_ids_are_refused(small):
    for job_id in ("..", ".", "a/b", "x" * 65, "tmp 1", ".partial"):
        answer = init(small, "alice", "ok.txt", 10, job_id=job_id)
        assert answer.status_code == 400 and "job_id" in answer.json()["errors"], job_id


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_bad_fields_are_all_named(small):
    answer = init(small, "alice", 5, -1, sha256="nope", chunk_size="big")
    assert answer.status_code == 400
    assert set(answer.json()["errors"]) == {"filename", "size", "sha256", "chunk_size"}


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_names_are_normalised_and_clashes_numbered(small):
    first = upload(small, "alice", b"one\n", filename="e\u0301t\u00e9.txt", chunk_size=1024)
    assert first["filename"] == "\u00e9t\u00e9.txt"
    second = upload(small, "alice", b"two\n", filename="\u00e9t\u00e9.txt", chunk_size=1024)
    assert second["filename"] == "\u00e9t\u00e9 (1).txt"
    assert second["storage_path"].endswith("/unlinked/\u00e9t\u00e9 (1).txt")
    with open(first["storage_path"], "rb") as handle:
        assert handle.read() == b"one\n"


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_planted_symlink_is_never_followed(small, shared_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    info = init(small, "alice", "trap.txt", 4, chunk_size=1024, job_id="job1").json()
    send_chunk(small, "alice", info["upload_id"], 0, b"data")
    os.symlink(elsewhere, os.path.join(shared_dir.uploads, "alice", "files", "job1"))
    refused = complete(small, "alice", info["upload_id"])
    assert refused.status_code == 409 and refused.json()["error"] == "unsafe_path"
    assert list(elsewhere.iterdir()) == []
    os.unlink(os.path.join(shared_dir.uploads, "alice", "files", "job1"))
    assert complete(small, "alice", info["upload_id"]).status_code == 200


def test_another_users_upload_and_files_are_not_found(small):
    info = init(small, "alice", "mine.txt", 4, chunk_size=1024).json()
    uid = info["upload_id"]
    assert status(small, "bob", uid).status_code == 404
    assert send_chunk(small, "bob", uid, 0, b"evil").status_code == 404
    assert complete(small, "bob", uid).status_code == 404
    assert small.delete(f"/api/v2/files/upload/{uid}", user="bob").status_code == 404
    send_chunk(small, "alice", uid, 0, b"mine")
    result = complete(small, "alice", uid).json()
    assert complete(small, "bob", uid).status_code == 404
    for suffix in ("", "/content", "/preview"):
        assert small.get(f"/api/v2/files/{result['file_id']}{suffix}", user="bob").status_code == 404
    assert small.delete(f"/api/v2/files/{result['file_id']}", user="bob").status_code == 404
    assert small.get("/api/v2/files", user="bob").json()["files"] == []
    assert small.get(f"/api/v2/files/{result['file_id']}", user="alice").status_code == 200


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_disconnect_mid_chunk_records_nothing(small):
    info = init(small, "alice", "cut.bin", 4096, chunk_size=4096).json()
    with socket.create_connection(("127.0.0.1", small.port), timeout=10) as sock:
        head = (f"POST /api/v2/files/upload/chunk?upload_id={info['upload_id']}&chunk_index=0 HTTP/1.1\r\n"
                f"Host: x\r\nAuthorization: {_bearer('alice')}\r\n"
                "Content-Type: application/octet-stream\r\nContent-Length: 4096\r\n\r\n")
        sock.sendall(head.encode() + b"z" * 2000)
        sock.shutdown(socket.SHUT_WR)  # the client is gone, 2096 bytes short
        # Positive signal: the daemon closes its side once it has dropped the request.
        sock.settimeout(30)
        while sock.recv(65536):
            pass
    assert status(small, "alice", info["upload_id"]).json()["received_chunks"] == []
    assert send_chunk(small, "alice", info["upload_id"], 0, b"y" * 4096).status_code == 200


def _bearer(user):
    from support.daemon import auth_headers
    return auth_headers(user)["Authorization"]


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_download_with_range_and_etag(small):
    data = random_bytes(10_000)
    result = upload(small, "alice", data, filename="blob.bin", chunk_size=1024)
    url = f"/api/v2/files/{result['file_id']}/content"
    whole = small.get(url, user="alice")
    assert whole.status_code == 200 and whole.content == data
    etag = whole.headers["ETag"]
    assert etag == f'"{sha256(data)}"' and whole.headers["Accept-Ranges"] == "bytes"
    part = small.get(url, user="alice", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["Content-Range"] == "bytes 100-199/10000"
    assert small.get(url, user="alice", headers={"Range": "bytes=9990-"}).content == data[9990:]
    assert small.get(url, user="alice", headers={"Range": "bytes=-5"}).content == data[-5:]
    outside = small.get(url, user="alice", headers={"Range": "bytes=20000-"})
    assert outside.status_code == 416 and outside.headers["Content-Range"] == "bytes */10000"
    assert small.get(url, user="alice", headers={"If-None-Match": etag}).status_code == 304
    stale = small.get(url, user="alice", headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == data


def test_files_api_lists_filters_previews_and_deletes(small):
    text = upload(small, "alice", b"hello\nworld\n", filename="readme.txt", chunk_size=1024,
                  job_id="tmp-1")
    script = upload(small, "alice", b"#!/bin/bash\necho hi\n", filename="run.sh", chunk_size=1024)
    csv = upload(small, "alice", b"a,b,c\n1,2,3\n4,5,6\n", filename="table.csv", chunk_size=1024)
    hdf5 = upload(small, "alice", b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4, filename="f.h5",
                  chunk_size=1024)
    tar = upload(small, "alice", _tar_bytes(), filename="inputs.tar.gz", chunk_size=1024)
    binary = upload(small, "alice", bytes(range(256)) * 8, filename="blob", chunk_size=1024)
    types = {f["filename"]: f["file_type"] for f in (text, script, csv, hdf5, tar, binary)}
    assert types == {"readme.txt": "text", "run.sh": "script", "table.csv": "data",
                     "f.h5": "data", "inputs.tar.gz": "archive", "blob": "binary"}
    assert hdf5["mime_type"] == "application/x-hdf5" and tar["mime_type"] == "application/gzip"
    listed = small.get("/api/v2/files", user="alice").json()
    assert listed["total"] == 6
    assert small.get("/api/v2/files?job_id=tmp-1", user="alice").json()["files"] == [text]
    assert small.get("/api/v2/files?file_type=data", user="alice").json()["total"] == 2
    page = small.get("/api/v2/files?limit=2&offset=2", user="alice").json()
    assert len(page["files"]) == 2 and page["total"] == 6
    assert small.get("/api/v2/files?file_type=weird", user="alice").status_code == 400
    preview = small.get(f"/api/v2/files/{text['file_id']}/preview", user="alice").json()
    assert preview["content"] == "hello\nworld\n" and preview["truncated"] is False
    refused = small.get(f"/api/v2/files/{binary['file_id']}/preview", user="alice")
    assert refused.status_code == 415
    assert small.delete(f"/api/v2/files/{text['file_id']}", user="alice").status_code == 204
    assert not os.path.exists(text["storage_path"])
    assert small.get(f"/api/v2/files/{text['file_id']}", user="alice").status_code == 404


def _tar_bytes():
    import io
    import tarfile
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("a.txt")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    return buffer.getvalue()


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_malformed_and_oversized_json_bodies(daemon_factory):
    daemon = daemon_factory(config={"server": {"max_json_body": "1KiB"}})
    bad = daemon.post("/api/v2/files/upload/init", user="alice", data='{"filename": "a", "size": ',
                      headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"] == "malformed_json"
    assert "line 1, column" in bad.json()["message"]
    huge = daemon.post("/api/v2/files/upload/init", user="alice",
                       json={"filename": "a", "size": 1, "pad": "x" * 4096})
    assert huge.status_code == 413 and huge.json()["error"] == "too_large"


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_chunk_body_over_the_server_limit_is_413(small):
    info = init(small, "alice", "a.bin", 10, chunk_size=1024).json()
    answer = send_chunk(small, "alice", info["upload_id"], 0, b"x" * (3 * 1024 * 1024))
    assert answer.status_code == 413


@pytest.mark.databases("sqlite")
def test_state_is_in_the_database_one_row_per_chunk(small, shared_dir):
    info = init(small, "alice", "rows.bin", 3072, chunk_size=1024).json()
    for index in (2, 0):
        send_chunk(small, "alice", info["upload_id"], index, b"r" * 1024)
    with sqlite3.connect(f"{shared_dir.state}/portal.db") as conn:
        rows = conn.execute("SELECT chunk_index FROM upload_chunk WHERE upload_id = ? "
                            "ORDER BY chunk_index", (info["upload_id"],)).fetchall()
    assert rows == [(0,), (2,)]


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_disk_full_is_507_and_the_upload_resumes(daemon_factory, shared_dir, tmp_path):
    mount = tmp_path / "small-fs"
    mount.mkdir()
    if os.system(f"mount -t tmpfs -o size=1m tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        os.chmod(mount, 0o755)
        daemon = daemon_factory(config={"paths": {"uploads": str(mount)}, **SMALL})
        data = random_bytes(200 * 1024)
        info = init(daemon, "alice", "full.bin", len(data), chunk_size=100 * 1024,
                    sha256=sha256(data)).json()
        filler = mount / "filler"
        with open(filler, "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        full = send_chunk(daemon, "alice", info["upload_id"], 0, data[:100 * 1024])
        assert full.status_code == 507, full.text
        assert status(daemon, "alice", info["upload_id"]).json()["received_chunks"] == []
        filler.unlink()
        for index in (0, 1):
            piece = data[index * 100 * 1024:(index + 1) * 100 * 1024]
            assert send_chunk(daemon, "alice", info["upload_id"], index, piece).status_code == 200
        assert complete(daemon, "alice", info["upload_id"]).json()["sha256"] == sha256(data)
        daemon.stop()
    finally:
        os.system(f"umount {mount}")


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_upload_metrics(small):
    upload(small, "alice", b"m" * 2048, chunk_size=1024)
    send_chunk(small, "alice", init(small, "alice", "z", 10, chunk_size=1024).json()["upload_id"],
               0, b"short")
    text = small.get("/metrics").text
    assert 'hpcportal_uploads_started_total{protocol="chunk"} 2.0' in text
    assert 'hpcportal_uploads_completed_total{protocol="chunk"} 1.0' in text
    assert 'hpcportal_upload_bytes_received_total{protocol="chunk"} 2048.0' in text
    assert 'hpcportal_uploads_failed_total{reason="chunk_size"} 1.0' in text


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_unauthenticated_upload_is_401(small):
    answer = requests.post(small.url + "/api/v2/files/upload/init", json={"filename": "a", "size": 1},
                           timeout=10)
    assert answer.status_code == 401


def _reread(daemon):
    for line in daemon.get("/metrics").text.splitlines():
        if line.startswith("hpcportal_upload_complete_reread_bytes_total "):
            return float(line.split()[1])
    raise AssertionError("no reread metric")


def test_completion_reuses_the_hash_computed_while_chunks_arrived(daemon_factory):
    first = daemon_factory(config=SMALL)
    second = daemon_factory(config=SMALL)
    data = random_bytes(6 * 1024)
    pieces = chunks_of(data, 1024)
    # In order on one head (any order of the first ones): nothing is read back.
    info = init(first, "alice", "inorder.bin", len(data), chunk_size=1024).json()
    for index in (1, 0, 2, 3, 4, 5):
        send_chunk(first, "alice", info["upload_id"], index, pieces[index])
    assert complete(first, "alice", info["upload_id"]).json()["sha256"] == sha256(data)
    assert _reread(first) == 0
    # A chunk re-sent through the other head after it was hashed here: the
    # hash is not trusted, the file is read back, and the sha256 is right.
    changed = pieces[:2] + [b"x" * 1024] + pieces[3:]
    info = init(first, "alice", "resent.bin", len(data), chunk_size=1024).json()
    for index, piece in enumerate(pieces):
        send_chunk(first, "alice", info["upload_id"], index, piece)
    send_chunk(second, "alice", info["upload_id"], 2, changed[2])
    assert complete(first, "alice", info["upload_id"]).json()["sha256"] == sha256(b"".join(changed))
    assert _reread(first) == len(data)
    # Completed on a head that did not see the upload start: read back there.
    info = init(first, "alice", "other.bin", len(data), chunk_size=1024).json()
    for index, piece in enumerate(pieces):
        send_chunk(first, "alice", info["upload_id"], index, piece)
    assert complete(second, "alice", info["upload_id"]).json()["sha256"] == sha256(data)
    assert _reread(second) == len(data)


def _peak_rss(daemon):
    with open(f"/proc/{daemon.proc.pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_memory_stays_flat_whatever_the_chunk_size(daemon_factory):
    mib = 1024 * 1024
    # One malloc arena: otherwise each worker thread's first requests grow
    # its own arena, which looks like growth but is per thread, not per byte.
    daemon = daemon_factory(config={"uploads": {"max_chunk_size": "8MiB", "free_space_reserve": 0}},
                            env={"MALLOC_ARENA_MAX": "1"})
    chunk = random_bytes(8 * mib)

    def upload_chunks(count, multipart):
        info = init(daemon, "alice", "big.bin", count * len(chunk), chunk_size=len(chunk)).json()
        for index in range(count):
            answer = send_chunk(daemon, "alice", info["upload_id"], index, chunk, multipart=multipart)
            assert answer.status_code == 200, answer.text
        assert complete(daemon, "alice", info["upload_id"]).status_code == 200

    # Warm-up: every worker thread once per kind of body (its buffers, its
    # malloc arena); that much memory is per thread, not per byte uploaded.
    for _ in range(2):
        upload_chunks(4, False)
        upload_chunks(4, True)
    before = _peak_rss(daemon)
    upload_chunks(4, False)
    upload_chunks(4, True)
    # Holding one 8 MiB chunk in memory even once would raise the peak by 8 MiB.
    assert _peak_rss(daemon) - before < 6 * mib


def _waits_for_the_lock(thread):
    """Positive signal: ``thread`` stands on a ``with lock:`` line (blocked acquiring it)."""
    frame = sys._current_frames().get(thread.ident)
    return (frame is not None and frame.f_code.co_name == "write_at"
            and linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip() == "with lock:")


@pytest.mark.unit  # in process
def test_writes_to_one_file_take_turns_and_other_files_do_not_wait(tmp_path):
    storage = Storage(str(tmp_path))
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    first = os.open(tmp_path / "upload", flags, 0o600)
    second = os.open(tmp_path / "upload", flags, 0o600)  # another descriptor, same file
    other = os.open(tmp_path / "other", flags, 0o600)
    try:
        lock = storage.write_lock(first)
        assert storage.write_lock(second) is lock
        assert storage.write_lock(other) is not lock
        with lock:  # a write to this file is under way
            writer = threading.Thread(target=storage.write_at, args=(second, 0, io.BytesIO(b"x" * 10), 10))
            writer.start()
            storage.write_at(other, 0, io.BytesIO(b"y" * 10), 10)
            assert os.pread(other, 10, 0) == b"y" * 10
            wait_for(lambda: _waits_for_the_lock(writer), timeout=30, interval=0.01,
                     message="the writer to wait for the file's lock")
            assert os.pread(first, 10, 0) == b""
        writer.join(10)
        assert os.pread(first, 10, 0) == b"x" * 10
    finally:
        for fd in (first, second, other):
            os.close(fd)



@pytest.mark.unit  # in process
def test_hashed_upload_data_leaves_the_page_cache():
    # /var/tmp, not tmp_path: tmpfs keeps its pages whatever the advice.
    folder = tempfile.mkdtemp(prefix="hpcportal-cache-", dir="/var/tmp")
    try:
        storage = Storage(folder)
        path = os.path.join(folder, "upload")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            data = os.urandom(8 * 1024 * 1024)
            storage.write_at(fd, 0, io.BytesIO(data), len(data))  # written and fsynced
            if not drops_cached_pages(folder):
                pytest.skip(f"{folder}'s filesystem keeps its pages whatever the advice")
            pages = resident_pages(path)[1]
            kept, released = hashlib.sha256(), hashlib.sha256()
            storage.hash_range(fd, kept, 0, len(data) // 2)
            storage.hash_range(fd, released, len(data) // 2, len(data), release=True)
            assert resident_pages(path)[0] >= pages // 2 - 1  # the first half: still cached
            assert resident_pages(path)[0] <= pages // 2 + 1  # the hashed second half: released
            assert kept.hexdigest() == hashlib.sha256(data[:len(data) // 2]).hexdigest()
            assert released.hexdigest() == hashlib.sha256(data[len(data) // 2:]).hexdigest()
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_uploaded_data_leaves_the_page_cache_once_hashed(small, shared_dir):
    if not drops_cached_pages(shared_dir.root):
        pytest.skip(f"{shared_dir.root}'s filesystem keeps its pages whatever the advice")
    data = random_bytes(4 * 1024 * 1024)
    result = upload(small, "alice", data, filename="big.bin", chunk_size=1024 * 1024)
    assert result["sha256"] == sha256(data)
    resident, pages = resident_pages(result["storage_path"])
    assert resident <= pages // 4, f"{resident} of {pages} pages still cached"
