"""tus 1.0.0 against real daemons: the protocol by hand, then the real
``tuspy`` client (PyPI) and ``tus-js-client`` under Node (npm)."""

import base64
import hashlib
import json
import os
import shutil
import subprocess

import pytest
import requests

from support.daemon import auth_headers, make_token
from support.uploads import SMALL, drops_cached_pages, random_bytes, resident_pages, sha256

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


@pytest.fixture
def small(daemon_factory):
    return daemon_factory(config=SMALL)


def meta(**values):
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def create(daemon, user, length, body=None, **metadata):
    headers = {**TUS, **auth_headers(user), "Upload-Length": str(length),
               "Upload-Metadata": meta(**(metadata or {"filename": "t.bin"}))}
    if body is not None:
        headers.update(OCTETS)
    return requests.post(daemon.url + "/api/v2/files/tus", headers=headers, data=body, timeout=30)


def patch(url, user, offset, body, **headers):
    return requests.patch(url, data=body, timeout=30, headers={
        **TUS, **OCTETS, **auth_headers(user), "Upload-Offset": str(offset), **headers})


def head(url, user):
    return requests.head(url, headers={**TUS, **auth_headers(user)}, timeout=30)


def checksum(algorithm, data):
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def test_tus_data_leaves_the_page_cache_once_hashed(small, shared_dir):
    if not drops_cached_pages(shared_dir.root):
        pytest.skip(f"{shared_dir.root}'s filesystem keeps its pages whatever the advice")
    step = 1024 * 1024
    data = random_bytes(4 * step)
    url = create(small, "alice", len(data), filename="big.bin").headers["Location"]
    for offset in range(0, len(data), step):
        answer = patch(url, "alice", offset, data[offset:offset + step])
        assert answer.status_code == 204, answer.text
    result = small.get(f"/api/v2/files/{answer.headers['Upload-File-Id']}", user="alice").json()
    assert result["sha256"] == sha256(data)
    resident, pages = resident_pages(result["storage_path"])
    assert resident <= pages // 4, f"{resident} of {pages} pages still cached"


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_options_advertises_the_server(small):
    answer = requests.options(small.url + "/api/v2/files/tus", headers=auth_headers("alice"), timeout=10)
    assert answer.status_code == 204
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    assert answer.headers["Tus-Version"] == "1.0.0"
    assert answer.headers["Tus-Extension"] == \
        "creation,creation-with-upload,termination,checksum,expiration"
    assert answer.headers["Tus-Max-Size"] == str(50 * 1024 ** 3)
    assert answer.headers["Tus-Checksum-Algorithm"] == "sha1,md5,sha256"


def test_tus_protocol_by_hand(small, shared_dir):
    data = random_bytes(3000)
    created = create(small, "alice", len(data), body=data[:1000], filename="by-hand.csv",
                     job_id="tmp-9")
    assert created.status_code == 201, created.text
    assert created.headers["Upload-Offset"] == "1000"
    assert created.headers["Tus-Resumable"] == "1.0.0"
    assert "GMT" in created.headers["Upload-Expires"]
    url = created.headers["Location"]
    assert url.startswith(small.url + "/api/v2/files/tus/")

    state = head(url, "alice")
    assert state.status_code == 200
    assert (state.headers["Upload-Offset"], state.headers["Upload-Length"]) == ("1000", "3000")
    assert state.headers["Cache-Control"] == "no-store"
    assert "filename" in state.headers["Upload-Metadata"] and "Upload-Expires" in state.headers

    assert patch(url, "alice", 0, data[:1000]).status_code == 409
    wrong_type = requests.patch(url, data=data[1000:2000], timeout=30, headers={
        **TUS, **auth_headers("alice"), "Upload-Offset": "1000",
        "Content-Type": "application/octet-stream"})
    assert wrong_type.status_code == 415
    mismatch = patch(url, "alice", 1000, data[1000:2000],
                     **{"Upload-Checksum": checksum("sha1", b"other")})
    assert mismatch.status_code == 460 and mismatch.json()["error"] == "checksum_mismatch"
    assert head(url, "alice").headers["Upload-Offset"] == "1000"
    unknown = patch(url, "alice", 1000, data[1000:2000], **{"Upload-Checksum": "crc32 AAAA"})
    assert unknown.status_code == 400
    no_version = requests.patch(url, data=b"x", timeout=30, headers={
        **OCTETS, **auth_headers("alice"), "Upload-Offset": "1000"})
    assert no_version.status_code == 412 and no_version.headers["Tus-Version"] == "1.0.0"

    step = requests.post(url, data=data[1000:2000], timeout=30, headers={
        **TUS, **OCTETS, **auth_headers("alice"), "Upload-Offset": "1000",
        "X-HTTP-Method-Override": "PATCH", "Upload-Checksum": checksum("md5", data[1000:2000])})
    assert step.status_code == 204 and step.headers["Upload-Offset"] == "2000"
    assert "Upload-Expires" in step.headers
    assert patch(url, "alice", 2000, data[2000:] + b"extra").status_code == 413
    last = patch(url, "alice", 2000, data[2000:], **{"Upload-Checksum": checksum("sha256", data[2000:])})
    assert last.status_code == 204 and last.headers["Upload-Offset"] == "3000"
    file_id = last.headers["Upload-File-Id"]
    result = small.get(f"/api/v2/files/{file_id}", user="alice").json()
    assert result["sha256"] == sha256(data) and result["job_id"] == "tmp-9"
    assert result["storage_path"] == os.path.join(shared_dir.uploads, "alice", "files", "tmp-9",
                                                  "by-hand.csv")
    done = head(url, "alice")
    assert (done.headers["Upload-Offset"], done.headers["Upload-Length"]) == ("3000", "3000")
    # Hashed as it arrived (refused bodies included, they were not counted):
    # completion read nothing back.
    assert "hpcportal_upload_complete_reread_bytes_total 0.0" in small.get("/metrics").text


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_refused_checksums_and_versions_answer_like_tus_says(small):
    data = b"0123456789"
    headers = {**TUS, **OCTETS, **auth_headers("alice"), "Upload-Length": "10",
               "Upload-Metadata": meta(filename="c.bin"),
               "Upload-Checksum": checksum("sha1", b"other")}
    # creation-with-upload: the upload is created, only its data part is refused
    created = requests.post(small.url + "/api/v2/files/tus", headers=headers, data=data, timeout=30)
    assert created.status_code == 201 and created.headers["Upload-Offset"] == "0"
    assert created.json()["error"] == "checksum_mismatch"
    url = created.headers["Location"]
    assert head(url, "alice").headers["Upload-Offset"] == "0"
    mismatch = patch(url, "alice", 0, data, **{"Upload-Checksum": checksum("md5", b"other")})
    assert (mismatch.status_code, mismatch.reason) == (460, "Checksum Mismatch")
    assert mismatch.headers["Tus-Resumable"] == "1.0.0" and mismatch.json()["error"] == "checksum_mismatch"
    old = requests.head(url, headers={**auth_headers("alice"), "Tus-Resumable": "0.2.2"}, timeout=30)
    assert old.status_code == 412 and old.headers["Tus-Version"] == "1.0.0"
    assert old.headers["Tus-Resumable"] == "1.0.0"
    done = patch(url, "alice", 0, data, **{"Upload-Checksum": checksum("sha256", data)})
    assert done.status_code == 204 and done.headers["Upload-Offset"] == "10"


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_tus_creation_checks_and_termination(small):
    assert requests.post(small.url + "/api/v2/files/tus", timeout=10, headers={
        **auth_headers("alice"), "Upload-Length": "5", "Upload-Metadata": meta(filename="a")}
    ).status_code == 412
    assert create(small, "alice", "-1").status_code == 400
    assert create(small, "alice", 10, filename="../x").status_code == 400
    no_name = requests.post(small.url + "/api/v2/files/tus", timeout=10, headers={
        **TUS, **auth_headers("alice"), "Upload-Length": "5"})
    assert no_name.status_code == 400
    assert create(small, "alice", 51 * 1024 ** 3).status_code == 413
    url = create(small, "alice", 10).headers["Location"]
    assert head(url, "bob").status_code == 404
    assert patch(url, "bob", 0, b"x" * 10).status_code == 404
    assert requests.delete(url, headers={**TUS, **auth_headers("bob")}, timeout=10).status_code == 404
    gone = requests.delete(url, headers={**TUS, **auth_headers("alice")}, timeout=10)
    assert gone.status_code == 204 and gone.headers["Tus-Resumable"] == "1.0.0"
    assert head(url, "alice").status_code == 404


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_patch_larger_than_max_chunk_size_is_413(small):
    url = create(small, "alice", 4 * 1024 * 1024).headers["Location"]
    answer = patch(url, "alice", 0, b"x" * (1024 * 1024 + 1))
    assert answer.status_code == 413 and answer.json()["max_chunk_size"] == 1024 * 1024


def test_tuspy_client_with_resume_after_restart(daemon_factory, tmp_path):
    from tusclient import client as tus_client

    daemon = daemon_factory(config=SMALL)
    data = random_bytes(300 * 1024 + 17)
    path = tmp_path / "py.bin"
    path.write_bytes(data)
    headers = auth_headers("alice")
    uploader = tus_client.TusClient(daemon.url + "/api/v2/files/tus/", headers=headers).uploader(
        str(path), chunk_size=64 * 1024, metadata={"filename": "py.bin", "job_id": "tmp-py"},
        upload_checksum=True)
    uploader.upload(stop_at=128 * 1024)
    url = uploader.url
    assert head(url, "alice").headers["Upload-Offset"] == str(128 * 1024)
    daemon.restart()
    resumed = tus_client.TusClient(daemon.url + "/api/v2/files/tus/", headers=headers).uploader(
        str(path), chunk_size=64 * 1024, url=url, upload_checksum=True)
    assert resumed.offset == 128 * 1024
    resumed.upload()
    files = daemon.get("/api/v2/files?job_id=tmp-py", user="alice").json()["files"]
    assert [(f["filename"], f["sha256"], f["size"]) for f in files] == [("py.bin", sha256(data), len(data))]


TUS_JS_VERSION = "4"
NODE_SCRIPT = r"""
const tus = require('tus-js-client');
const fs = require('fs');
const env = process.env;
const data = fs.readFileSync(env.FILE);
const stopAfter = parseInt(env.STOP_AFTER || '0', 10);
let chunks = 0;
const upload = new tus.Upload(data, {
  endpoint: env.ENDPOINT,
  uploadUrl: env.UPLOAD_URL || null,
  chunkSize: parseInt(env.CHUNK, 10),
  retryDelays: null,
  storeFingerprintForResuming: false,
  headers: {Authorization: 'Bearer ' + env.TOKEN},
  metadata: {filename: 'js.bin', job_id: 'tmp-js'},
  onChunkComplete(size, accepted) {
    chunks += 1;
    if (stopAfter && chunks >= stopAfter) {
      upload.abort().then(() => {
        console.log(JSON.stringify({url: upload.url, offset: accepted}));
        process.exit(0);
      });
    }
  },
  onSuccess() { console.log(JSON.stringify({url: upload.url, done: true})); },
  onError(error) { console.error(String(error)); process.exit(1); },
});
upload.start();
"""


@pytest.fixture(scope="session")
def tus_js_modules():
    """node_modules holding tus-js-client, installed once into a cache folder."""
    # scripts/install-deps installs them: a missing tool is a broken setup, not a reason to skip.
    assert shutil.which("node") and shutil.which("npm"), \
        "node and npm are missing: run scripts/install-deps (Debian packages nodejs, npm)"
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "hpcportal-tests", f"tus-js-client-{TUS_JS_VERSION}")
    modules = os.path.join(cache, "node_modules")
    if not os.path.exists(os.path.join(modules, "tus-js-client", "package.json")):
        os.makedirs(cache, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", cache, "--no-audit", "--no-fund",
                        "--loglevel=error", f"tus-js-client@{TUS_JS_VERSION}"],
                       check=True, capture_output=True, timeout=600)
    return modules


def run_node(modules, script_dir, **env):
    script = script_dir / "upload.js"
    script.write_text(NODE_SCRIPT)
    answer = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "NODE_PATH": modules, **env})
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout.strip().splitlines()[-1])


@pytest.mark.databases("sqlite")  # no SQL of interest: one backend is enough
def test_tus_js_client_with_resume_after_restart(daemon_factory, tmp_path, tus_js_modules):
    daemon = daemon_factory(config=SMALL)
    data = random_bytes(200 * 1024 + 5)
    path = tmp_path / "js.bin"
    path.write_bytes(data)
    common = {"FILE": str(path), "ENDPOINT": daemon.url + "/api/v2/files/tus/",
              "TOKEN": make_token("alice"), "CHUNK": str(32 * 1024)}
    first = run_node(tus_js_modules, tmp_path, STOP_AFTER="3", **common)
    assert first["offset"] == 3 * 32 * 1024
    daemon.restart()
    second = run_node(tus_js_modules, tmp_path, UPLOAD_URL=first["url"], **common)
    assert second == {"url": first["url"], "done": True}
    files = daemon.get("/api/v2/files?job_id=tmp-js", user="alice").json()["files"]
    assert [(f["filename"], f["sha256"]) for f in files] == [("js.bin", sha256(data))]


def test_tus_upload_is_listed_like_a_chunk_upload(small):
    data = b"#!/bin/sh\necho tus\n"
    created = create(small, "alice", len(data), body=data, filename="go.sh")
    assert created.status_code == 201
    assert created.headers["Upload-Offset"] == str(len(data))
    listed = small.get("/api/v2/files", user="alice").json()["files"]
    assert listed == [created.json()["file"]]
    assert listed[0]["file_type"] == "script"
    text = small.get("/metrics").text
    assert 'hpcportal_uploads_completed_total{protocol="tus"} 1.0' in text


def test_empty_files_through_both_protocols(small):
    created = create(small, "alice", 0, filename="empty-tus.txt")
    assert created.status_code == 201, created.text
    assert created.json()["file"]["size"] == 0
    assert created.json()["file"]["sha256"] == sha256(b"")
    started = small.post("/api/v2/files/upload/init", user="alice",
                         json={"filename": "empty.txt", "size": 0}).json()
    assert started["total_chunks"] == 0
    done = small.post("/api/v2/files/upload/complete", user="alice",
                      json={"upload_id": started["upload_id"]})
    assert done.status_code == 200 and done.json()["sha256"] == sha256(b"")
