"""A job's results in sub-folders: listed (bounded) and downloaded, never through a link or a FIFO."""

import http.client
import urllib.parse

import pytest

from support.daemon import auth_headers
from support.slurm import jobs_config, slurm_conf, wait_finished  # noqa: F401

pytestmark = pytest.mark.slurm

SUBMIT = "/api/slurm/jobs/submit"
KOREAN = "결과 1.txt"


def submit(daemon, user, script, **fields):
    answer = daemon.post(SUBMIT, user=user, json={"jobName": "results", "script": script, **fields})
    assert answer.status_code == 200, answer.text
    return answer.json()["jobId"]


def listing(daemon, job_id, user="alice"):
    answer = daemon.get(f"/api/slurm/jobs/{job_id}/files", user=user)
    assert answer.status_code == 200, answer.text
    return answer.json()


def raw_get(daemon, path, user="alice"):
    """GET with the path sent exactly as written (requests would resolve dot segments)."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=20)
    try:
        connection.request("GET", path, headers=auth_headers(user))
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


@pytest.mark.databases("sqlite")
def test_results_in_sub_folders_are_listed_and_downloaded_without_following_links(
        daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    script = ("#!/bin/bash\nset -e\nmkdir -p out/sub && echo hi > out/sub/a.txt\n"
              f"printf '0123456789' > 'out/{KOREAN}'\n"
              "ln -s /etc/passwd out/link && mkfifo out/fifo && ln -s /etc out/dirlink\n"
              "python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"out/socket\")'\n"
              "echo done\n")
    job_id = submit(daemon, "alice", script)
    assert wait_finished(daemon, "alice", job_id)["state"] == "COMPLETED"

    body = listing(daemon, job_id)
    assert body["truncated"] is False
    paths = [f["path"] for f in body["files"]]
    assert paths == sorted(paths)
    assert {"job.sbatch", f"slurm-{job_id}.out", "out/sub/a.txt", f"out/{KOREAN}"} <= set(paths)
    # Links, the FIFO and the socket are not results: not listed, never followed (no passwd inside /etc).
    assert not [p for p in paths if p.startswith(("out/link", "out/fifo", "out/dirlink", "out/socket"))]
    nested = next(f for f in body["files"] if f["path"] == "out/sub/a.txt")
    assert nested["name"] == "a.txt" and nested["size"] == 3
    assert nested["url"] == f"/api/slurm/jobs/{job_id}/files/out/sub/a.txt"
    korean = next(f for f in body["files"] if f["path"] == f"out/{KOREAN}")
    assert korean["url"] == f"/api/slurm/jobs/{job_id}/files/out/" + urllib.parse.quote(KOREAN)
    assert "%20" in korean["url"]

    whole = daemon.get(nested["url"], user="alice")
    assert whole.status_code == 200 and whole.content == b"hi\n"
    # The slashes may come percent-encoded too: it is the same path.
    encoded = daemon.get(f"/api/slurm/jobs/{job_id}/files/" + urllib.parse.quote("out/sub/a.txt", safe=""),
                         user="alice")
    assert encoded.status_code == 200 and encoded.content == b"hi\n"
    part = daemon.get(korean["url"], user="alice", headers={"Range": "bytes=2-5"})
    assert part.status_code == 206 and part.content == b"2345"
    assert part.headers["Content-Range"] == "bytes 2-5/10"
    assert part.headers["Content-Disposition"] == "attachment; filename*=UTF-8''" + urllib.parse.quote(KOREAN,
                                                                                                       safe="")
    revalidated = daemon.get(korean["url"], user="alice", headers={"If-None-Match": part.headers["ETag"]})
    assert revalidated.status_code == 304
    # A single name is the old form of a path and still works.
    assert daemon.get(f"/api/slurm/jobs/{job_id}/files/job.sbatch", user="alice").status_code == 200

    base = f"/api/slurm/jobs/{job_id}/files/"
    for unsafe in ("out/link", "out/fifo", "out/socket", "out/dirlink/passwd", "out/fifo/x"):
        # requests' own timeout: a FIFO that were opened for reading would hold the answer for ever.
        answer = daemon.get(base + unsafe, user="alice", timeout=20)
        assert answer.status_code == 409, (unsafe, answer.text)
        assert answer.json()["error"] == "unsafe_path"
    for missing in ("out/nothing.txt", "out/sub", "out/sub/", "out/sub/a.txt/x", "nothing/a.txt"):
        answer = daemon.get(base + missing, user="alice")
        assert answer.status_code == 404, (missing, answer.text)
    for bad in ("..%2Fjobs", "out/%2E%2E/job.sbatch", "out//sub/a.txt", "%2Fetc%2Fpasswd", "out/./sub/a.txt",
                "out/sub/a.txt%00"):
        status, text = raw_get(daemon, base + bad)
        assert status == 400, (bad, text)
    # Another user sees nothing of the job.
    assert daemon.get(nested["url"], user="bob").status_code == 404
    assert daemon.get(f"/api/slurm/jobs/{job_id}/files", user="bob").status_code == 404


@pytest.mark.databases("sqlite")
def test_listing_is_bounded_in_count_and_depth(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf))
    deep = "d/1/2/3/4/5/6/7"  # 8 folders below the job's folder: the deepest listed
    deep_job = submit(daemon, "alice", f"#!/bin/bash\nmkdir -p {deep}/8\necho ok > {deep}/ok.txt\n"
                                       f"echo no > {deep}/8/no.txt\n")
    many_job = submit(daemon, "alice", "#!/bin/bash\nmkdir many\ncd many\n"
                                       "for i in $(seq 1 1200); do : > f$i; done\n")
    assert wait_finished(daemon, "alice", deep_job)["state"] == "COMPLETED"
    assert wait_finished(daemon, "alice", many_job)["state"] == "COMPLETED"

    body = listing(daemon, deep_job)
    paths = {f["path"] for f in body["files"]}
    assert f"{deep}/ok.txt" in paths and f"{deep}/8/no.txt" not in paths
    assert body["truncated"] is True
    assert daemon.get(f"/api/slurm/jobs/{deep_job}/files/{deep}/ok.txt", user="alice").content == b"ok\n"
    assert daemon.get(f"/api/slurm/jobs/{deep_job}/files/{deep}/8/no.txt", user="alice").status_code == 404

    body = listing(daemon, many_job)
    assert body["truncated"] is True and len(body["files"]) == 1000
    # The files at the top (the job's own) come before a large sub-folder uses up the bound.
    paths = {f["path"] for f in body["files"]}
    assert {"job.sbatch", f"slurm-{many_job}.out"} <= paths
