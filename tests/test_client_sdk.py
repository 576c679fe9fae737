"""The Python client (``hpcportal.client.Client``) against a real daemon and the local
Slurm: an interrupted upload resumed, jobs submitted, waited for, followed and
cancelled, and every failure a ClientError saying what happened."""

import hashlib
import os

import pytest
import requests

from hpcportal.client import Client, ClientError
from support.client import MiB, write_random
from support.client import portal  # noqa: F401 (a fixture)
from support.daemon import auth_headers, free_port, make_token
from support.slurm import slurm_conf  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slurm


class Interrupted(Exception):
    pass


def test_an_interrupted_upload_resumes_with_the_chunks_it_lacks(portal, tmp_path):
    size = 10 * MiB + 777
    source = write_random(str(tmp_path / "결과 파일 (1).bin"), size)
    cache = str(tmp_path / "cache")
    client = Client(portal.url, make_token("alice"), cache_dir=cache)

    def stop_after_three_chunks(done, total):
        if done >= 3 * MiB:
            raise Interrupted()
    with pytest.raises(Interrupted):
        client.upload(source, job_id="tmp-7", progress=stop_after_three_chunks, chunk_size=MiB, parallel=1)
    states = os.listdir(os.path.join(cache, "uploads"))
    assert len(states) == 1

    seen = []
    again = Client(portal.url, make_token("alice"), cache_dir=cache)
    uploaded = again.upload(source, job_id="tmp-7", progress=lambda done, total: seen.append((done, total)),
                            chunk_size=MiB, parallel=3)
    # The chunks sent before the interruption (three, and any in flight then) are not sent again.
    already = seen[0][0]
    assert 3 * MiB <= already < size and already % MiB == 0 and seen[0][1] == size
    assert seen[-1] == (size, size) and len(seen) == 1 + 11 - already // MiB
    with open(source, "rb") as handle:
        assert uploaded["sha256"] == hashlib.sha256(handle.read()).hexdigest()
    assert uploaded["filename"] == "결과 파일 (1).bin" and uploaded["job_id"] == "tmp-7"
    assert os.listdir(os.path.join(cache, "uploads")) == []
    assert client.file(uploaded["file_id"]) == uploaded
    assert [f["file_id"] for f in client.files(job_id="tmp-7")] == [uploaded["file_id"]]

    # Changed since: a new upload, not a resume of the old one.
    with open(source, "ab") as handle:
        handle.write(b"more")
    assert client.upload(source, chunk_size=MiB)["size"] == size + 4

    copy = client.download(uploaded["file_id"], str(tmp_path))
    assert copy == str(tmp_path / "결과 파일 (1).bin") and os.path.getsize(copy) == size
    client.delete_file(uploaded["file_id"])
    with pytest.raises(ClientError) as gone:
        client.file(uploaded["file_id"])
    assert gone.value.status == 404 and gone.value.code == "file_not_found"


def test_submit_wait_follow_and_cancel(portal):
    client = Client(portal.url, make_token("alice"))
    assert client.me()["user"] == "alice"
    answer = client.submit('#!/bin/bash\nfor i in 1 2 3; do echo "단계 $i"; sleep 0.4; done\n',
                           name="분석 작업", time="5", memory="100M")
    assert answer["success"] is True
    job_id = answer["jobId"]
    assert "".join(client.follow(job_id)) == "단계 1\n단계 2\n단계 3\n"
    finished = client.wait(job_id, interval=0.5, timeout=60)
    assert finished["state"] == "COMPLETED" and finished["name"] == "분석 작업"
    assert client.logs(job_id) == "단계 1\n단계 2\n단계 3\n"
    assert "job.sbatch" in {f["path"] for f in client.job_files(job_id)}
    assert job_id in {j["jobId"] for j in client.jobs(state="COMPLETED")}

    failing = client.submit("#!/bin/bash\nexit 5\n", name="fails")["jobId"]
    sleeper = client.submit("sleep 300", name="sleeper")["jobId"]
    assert client.wait(failing, interval=0.5, timeout=60)["exit_code"] == "5:0"
    assert client.cancel(sleeper)["success"] is True
    assert client.wait(sleeper, interval=0.5, timeout=60)["state"] == "CANCELLED"
    with pytest.raises(ClientError) as again:
        client.cancel(sleeper)
    assert again.value.status == 409

    with pytest.raises(ClientError) as refused:
        client.submit("true", name="x", memory="lots", time="forever")
    assert refused.value.status == 400 and set(refused.value.details) == {"memory", "time"}
    assert "'lots'" in refused.value.message and "forever" in refused.value.message  # one line says both


def test_failures_are_client_errors(portal):
    with pytest.raises(ClientError) as bad_token:
        Client(portal.url, "not-a-token").jobs()
    assert bad_token.value.code == "bad_token" and "token" in bad_token.value.message
    with pytest.raises(ClientError) as other_user:
        Client(portal.url, make_token("bob")).job("999999")
    assert other_user.value.status == 404
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ClientError) as unreachable:
        Client(url, make_token("alice")).me()
    assert unreachable.value.code == "unreachable" and unreachable.value.status is None
    assert url in unreachable.value.message


def test_follow_polls_while_the_portal_has_no_stream_to_spare(portal):
    # Kept last in the module: the daemon frees a stream slot only when it next writes to it.
    client = Client(portal.url, make_token("alice"))
    sleeper = client.submit("sleep 300", name="held")["jobId"]
    url = f"{portal.url}/api/slurm/jobs/{sleeper}/output"
    headers = {**auth_headers("alice"), "Accept": "text/event-stream"}
    held = [requests.get(url, headers=headers, stream=True, timeout=30) for _ in range(2)]
    try:
        assert [answer.status_code for answer in held] == [200, 200]
        job_id = client.submit('#!/bin/bash\necho "첫 줄"\nsleep 1\necho "둘째 줄"\n', name="polled")["jobId"]
        refused = requests.get(f"{portal.url}/api/slurm/jobs/{job_id}/output", headers=headers, timeout=30)
        assert refused.status_code == 429  # alice's two streams are taken
        assert "".join(client.follow(job_id, poll_interval=0.3)) == "첫 줄\n둘째 줄\n"
        assert client.job(job_id)["state"] == "COMPLETED"
    finally:
        for answer in held:
            answer.close()
        client.cancel(sleeper)
