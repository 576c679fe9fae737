"""Sharing files without copying them: POSIX ACLs on the real filesystem, jobs of the
recipient on the real local Slurm reading the owner's file in place."""

import os
import subprocess

import pytest

from support.daemon import Daemon, SharedTree, assert_no_traceback
from support.slurm import jobs_config, output, slurm_conf, wait_finished  # noqa: F401
from support.uploads import SMALL, upload
from support.users import ensure_group_users
from support.waiting import wait_for

SUBMIT = "/api/slurm/jobs/submit"
TABLE = "이름,값\n가,1\n나,2\n".encode()


@pytest.fixture(scope="module")
def tree(users):
    shared = SharedTree()
    yield shared
    shared.cleanup()


@pytest.fixture(scope="module")
def daemon(tree, slurm_conf):
    ensure_group_users()
    daemon = Daemon(tree, config={**SMALL, **jobs_config(tree, slurm_conf)}).start()
    yield daemon
    daemon.stop()
    logs = daemon.logs()
    assert_no_traceback(logs)


def acl(path):
    """The named entries of ``path``'s ACL: {"user:bob": "r--", ...}."""
    answer = subprocess.run(["getfacl", "-c", "-p", path], capture_output=True, text=True, check=True)
    entries = {}
    for line in answer.stdout.splitlines():
        tag, _, rest = line.partition(":")
        name, _, perms = rest.partition(":")
        if tag in ("user", "group") and name:
            entries[f"{tag}:{name}"] = perms.split()[0]
    return entries


def folders(tree, path):
    """The folders between the uploads root and ``path``: <owner>, files, <job>."""
    parts = os.path.relpath(path, tree.uploads).split(os.sep)
    return [os.path.join(tree.uploads, *parts[:depth]) for depth in (1, 2, 3)]


def as_user(name, *argv):
    """``argv`` run with ``name``'s identity and groups; its CompletedProcess."""
    return subprocess.run(["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups", "--", *argv],
                          capture_output=True, text=True, cwd="/", timeout=30)


def share(daemon, owner, file_id, **recipient):
    return daemon.post(f"/api/v2/files/{file_id}/shares", user=owner, json=recipient)


def submit(daemon, user, script, **fields):
    return daemon.post(SUBMIT, user=user, json={"jobName": "shared", "script": script, **fields})


def run_job(daemon, user, script, **fields):
    answer = submit(daemon, user, script, **fields)
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["jobId"]
    # Generous: the local cluster is shared with every other test's jobs.
    assert wait_finished(daemon, user, job_id, timeout=300)["state"] in ("COMPLETED", "FAILED")
    return output(daemon, user, job_id)


@pytest.mark.slurm
def test_alice_shares_with_bob_whose_job_reads_it_in_place(daemon, tree):
    stored = upload(daemon, "alice", TABLE, filename="결과 파일.csv", job_id="tmp-share")
    secret = upload(daemon, "alice", b"alice's secret\n", filename="secret.txt", job_id="tmp-share")
    elsewhere = upload(daemon, "alice", b"elsewhere\n", filename="other.txt")
    path, file_id = stored["storage_path"], stored["file_id"]
    assert daemon.get(f"/api/v2/files/{file_id}", user="bob").status_code == 404
    refused = submit(daemon, "bob", "#!/bin/bash\ncat \"$INPUT_FILE_0\"\n", fileIds=[file_id])
    assert refused.status_code == 400 and "fileIds[0]" in refused.json()["errors"]

    created = share(daemon, "alice", file_id, user="bob")
    assert created.status_code == 201, created.text
    granted = created.json()["share"]
    assert set(granted) == {"id", "user", "createdAt"} and granted["user"] == "bob"
    again = share(daemon, "alice", file_id, user="bob")
    assert again.status_code == 200 and again.json()["share"] == granted
    listed = daemon.get(f"/api/v2/files/{file_id}/shares", user="alice").json()["shares"]
    assert listed == [granted]

    # Read on the file, traverse only on its folders; nothing else of alice's.
    assert acl(path) == {"user:bob": "r--"}
    for folder in folders(tree, path):
        assert acl(folder) == {"user:bob": "--x"}, folder
    assert acl(secret["storage_path"]) == {} and acl(os.path.dirname(elsewhere["storage_path"])) == {}

    assert [f["file_id"] for f in daemon.get("/api/v2/files?shared=true", user="bob").json()["files"]] == [file_id]
    seen = daemon.get("/api/v2/files", user="bob", params={"shared": "true", "q": "결과"}).json()
    assert seen["total"] == 1 and seen["files"][0]["owner"] == "alice"
    assert all(f["owner"] == "bob" for f in daemon.get("/api/v2/files", user="bob").json()["files"])
    assert daemon.get("/api/v2/files?shared=true", user="alice").json()["files"] == []
    assert daemon.get(f"/api/v2/files/{file_id}/content", user="bob").content == TABLE
    assert daemon.get(f"/api/v2/files/{file_id}/preview", user="bob").json()["rows"] == [["가", "1"], ["나", "2"]]
    assert daemon.get(f"/api/v2/files/{secret['file_id']}", user="bob").status_code == 404

    # Only the owner changes, shares or deletes it.
    for answer in (daemon.delete(f"/api/v2/files/{file_id}", user="bob"), share(daemon, "bob", file_id, user="bob"),
                   daemon.get(f"/api/v2/files/{file_id}/shares", user="bob"),
                   daemon.delete(f"/api/v2/files/{file_id}/shares/{granted['id']}", user="bob")):
        assert answer.status_code == 403 and answer.json()["error"] == "not_owner", answer.text

    # Bob's job runs as bob and reads the file in place, by id and by path; it can
    # neither list the folder, read the file beside it, nor change or remove the file.
    script = ("#!/bin/bash\n"
              "cat \"$INPUT_FILE_0\"; cmp -s \"$INPUT_FILE_0\" \"$INPUT_FILE_1\" && echo SAME-FILE\n"
              "ls \"$(dirname \"$INPUT_FILE_0\")\" >/dev/null 2>&1 && echo LISTED || echo NOT-LISTED\n"
              f"cat '{secret['storage_path']}' 2>/dev/null || echo NO-SECRET\n"
              "echo more 2>/dev/null >> \"$INPUT_FILE_0\" || echo NO-WRITE\n"
              "rm -f \"$INPUT_FILE_0\" 2>/dev/null || echo NO-DELETE\n"
              "id -un\n")
    out = run_job(daemon, "bob", script, fileIds=[file_id], files=[{"storage_path": path}])
    assert out.startswith(TABLE.decode()), out
    for word in ("SAME-FILE", "NOT-LISTED", "NO-SECRET", "NO-WRITE", "NO-DELETE", "bob\n"):
        assert word in out, out
    assert "LISTED\n" not in out.replace("NOT-LISTED", "")
    assert open(path, "rb").read() == TABLE

    assert daemon.delete(f"/api/v2/files/{file_id}/shares/{granted['id']}", user="alice").status_code == 204
    assert daemon.delete(f"/api/v2/files/{file_id}/shares/{granted['id']}", user="alice").status_code == 404
    assert acl(path) == {} and all(acl(folder) == {} for folder in folders(tree, path))
    assert daemon.get(f"/api/v2/files/{file_id}", user="bob").status_code == 404
    assert daemon.get("/api/v2/files?shared=true", user="bob").json()["total"] == 0
    refused = submit(daemon, "bob", "#!/bin/bash\ncat \"$INPUT_FILE_0\"\n", fileIds=[file_id])
    assert refused.status_code == 400
    out = run_job(daemon, "bob", f"#!/bin/bash\ncat '{path}' 2>&1 && echo READ || echo NO-READ\n")
    assert "NO-READ" in out and "Permission denied" in out, out

    audited = [line for line in daemon.logs().splitlines() if "hpcportal.audit" in line and f"file:{file_id}" in line]
    assert any("'action': 'POST /api/v2/files/{file_id}/shares'" in line and "'status': 201" in line
               and f"'detail': {{'user': 'bob', 'share': '{granted['id']}'}}" in line for line in audited), audited
    assert any("'action': 'DELETE /api/v2/files/{file_id}/shares/{share_id}'" in line and "'status': 204" in line
               and f"'detail': {{'share': '{granted['id']}'}}" in line for line in audited), audited


@pytest.mark.slurm  # the module's daemon is the jobs test's
def test_group_shares_and_what_is_refused(daemon, tree):
    first = upload(daemon, "carol", b"for the lab\n", filename="lab 1.txt", job_id="tmp-lab")
    second = upload(daemon, "carol", b"also for the lab\n", filename="lab 2.txt", job_id="tmp-lab")
    created = share(daemon, "carol", first["file_id"], group="lab")
    assert created.status_code == 201 and created.json()["share"]["group"] == "lab"
    assert share(daemon, "carol", second["file_id"], group="lab").status_code == 201
    assert acl(first["storage_path"]) == {"group:lab": "r--"}
    assert all(acl(folder) == {"group:lab": "--x"} for folder in folders(tree, first["storage_path"]))

    # dave is in lab: he reads the files (as himself, on the filesystem) and lists them as shared.
    assert as_user("dave", "cat", first["storage_path"]).stdout == "for the lab\n"
    assert as_user("dave", "ls", os.path.dirname(first["storage_path"])).returncode != 0
    shared = daemon.get("/api/v2/files", user="dave", params={"shared": "true", "sort": "name"}).json()
    assert [f["filename"] for f in shared["files"]] == ["lab 1.txt", "lab 2.txt"]
    assert {f["owner"] for f in shared["files"]} == {"carol"}
    assert as_user("bob", "cat", first["storage_path"]).returncode != 0  # bob is not in lab

    # Unsharing one keeps the folders' entries the other still needs; deleting the other removes them.
    share_id = created.json()["share"]["id"]
    assert daemon.delete(f"/api/v2/files/{first['file_id']}/shares/{share_id}", user="carol").status_code == 204
    assert acl(first["storage_path"]) == {}
    assert all(acl(folder) == {"group:lab": "--x"} for folder in folders(tree, first["storage_path"]))
    assert daemon.delete(f"/api/v2/files/{second['file_id']}", user="carol").status_code == 204
    assert all(acl(folder) == {} for folder in folders(tree, first["storage_path"]))
    assert daemon.get("/api/v2/files?shared=true", user="dave").json()["files"] == []

    refusals = [
        ({"group": "outsiders"}, 403, "not_a_member"),  # carol is not in it
        ({"group": "no-such-group"}, 400, "invalid_request"),
        ({"user": "no-such-user"}, 400, "invalid_request"),
        ({"user": "root"}, 400, "invalid_request"),
        ({"user": "carol"}, 400, "invalid_request"),
        ({"user": "dave", "group": "lab"}, 400, "invalid_request"),
        ({}, 400, "invalid_request"),
        ({"user": ["dave"]}, 400, "invalid_request"),
    ]
    for body, status, code in refusals:
        answer = share(daemon, "carol", first["file_id"], **body)
        assert (answer.status_code, answer.json()["error"]) == (status, code), (body, answer.text)
    assert daemon.get(f"/api/v2/files/{first['file_id']}/shares", user="carol").json()["shares"] == []
    assert share(daemon, "carol", "no-such-file", user="dave").status_code == 404
    assert daemon.delete(f"/api/v2/files/{first['file_id']}/shares/nope", user="carol").status_code == 404


@pytest.fixture
def without_acls(users):
    """A shared tree where alice's uploads folder is a ramfs: a real filesystem that keeps
    no POSIX ACLs (the uploads root stays on disk: ramfs reports no free space)."""
    shared = SharedTree()
    folder = os.path.join(shared.uploads, "alice")
    os.mkdir(folder)
    subprocess.run(["mount", "-t", "ramfs", "-o", "mode=750", "ramfs", folder], check=True)
    os.chown(folder, 2001, 2001)
    yield shared
    subprocess.run(["umount", "-l", folder], check=True)
    shared.cleanup()


@pytest.mark.databases("sqlite")
def test_sharing_on_a_filesystem_without_acls_is_501(without_acls):
    daemon = Daemon(without_acls, config=SMALL).start()
    try:
        stored = upload(daemon, "alice", b"data\n", filename="data.txt")
        answer = share(daemon, "alice", stored["file_id"], user="bob")
        assert answer.status_code == 501 and answer.json()["error"] == "acls_not_supported", answer.text
        assert "does not support POSIX ACLs" in answer.json()["message"]
        assert daemon.get(f"/api/v2/files/{stored['file_id']}/shares", user="alice").json()["shares"] == []
        assert daemon.get("/api/v2/files?shared=true", user="bob").json()["files"] == []
    finally:
        daemon.stop()


@pytest.mark.databases("mariadb")
def test_shares_made_through_one_head_are_seen_and_undone_through_another(daemon_factory):
    first, second = daemon_factory(config=SMALL), daemon_factory(config=SMALL)
    stored = upload(first, "alice", b"across heads\n", filename="두 헤드.txt")
    granted = share(first, "alice", stored["file_id"], user="bob").json()["share"]
    assert second.get(f"/api/v2/files/{stored['file_id']}/shares", user="alice").json()["shares"] == [granted]
    assert second.get(f"/api/v2/files/{stored['file_id']}/content", user="bob").content == b"across heads\n"
    assert second.delete(f"/api/v2/files/{stored['file_id']}/shares/{granted['id']}", user="alice").status_code == 204
    assert first.get(f"/api/v2/files/{stored['file_id']}", user="bob").status_code == 404
    assert acl(stored["storage_path"]) == {}


@pytest.mark.databases("sqlite")
def test_a_file_removed_after_retention_days_takes_its_shares_along(daemon_factory, shared_dir):
    # Files are removed 8.6 s after their upload: time enough to share one first.
    daemon = daemon_factory(config={**SMALL, "uploads": {**SMALL["uploads"], "retention_days": 0.0001,
                                                         "cleanup_interval": "1s"}})
    stored = upload(daemon, "alice", b"short-lived\n", filename="잠깐.txt", job_id="tmp-brief")
    assert share(daemon, "alice", stored["file_id"], user="bob").status_code == 201
    assert all(acl(folder) == {"user:bob": "--x"} for folder in folders(shared_dir, stored["storage_path"]))
    wait_for(lambda: daemon.get(f"/api/v2/files/{stored['file_id']}", user="alice").status_code == 404,
             timeout=60, message="the retention pass to remove the file")
    assert not os.path.exists(stored["storage_path"])
    wait_for(lambda: all(acl(folder) == {} for folder in folders(shared_dir, stored["storage_path"])),
             timeout=30, message="the folders' entries to go")
    assert daemon.get("/api/v2/files?shared=true", user="bob").json()["files"] == []
