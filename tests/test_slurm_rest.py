"""The slurmrestd adapter (hpcportal.slurm.rest) against the real slurmrestd that
``scripts/dev-slurm start`` runs (SLURM_REST_URL, SLURM_JWT_KEY_FILE from its
output, as ``scripts/test`` exports them), plus in-process tests of the token cache.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from urllib.parse import urlsplit

import jwt
import pytest
from support.backends import UnixSocketRestd, dev_slurm_environment
from support.waiting import wait_for
from test_dev_services import assert_loopback_only

from hpcportal.slurm import SlurmRefused, SlurmUnavailable
from hpcportal.auth import User
from hpcportal.slurm.rest import SlurmRest, TokenSigner
from hpcportal.slurm.restjob import job_description

KEY = b"k" * 32


@pytest.fixture(scope="module")
def dev_slurm(users):
    return dev_slurm_environment()


@pytest.fixture
def rest(dev_slurm):
    client = SlurmRest(dev_slurm["SLURM_REST_URL"], TokenSigner.from_file(dev_slurm["SLURM_JWT_KEY_FILE"]))
    yield client
    client.close()


@pytest.fixture
def alice_dir(users):
    folder = tempfile.mkdtemp(prefix="hpcportal-rest-")
    os.chown(folder, 2001, 2001)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _job(folder, **fields):
    return {"name": f"rest-{uuid.uuid4().hex[:8]}", "partition": "viz", "current_working_directory": folder,
            "standard_output": os.path.join(folder, "rest-%j.out"),
            "environment": {"PATH": "/usr/bin:/bin"}, **fields}


def _squeue(conf, job_id, fmt):
    answer = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", fmt], capture_output=True, text=True,
                            env={**os.environ, "SLURM_CONF": conf}, timeout=60)
    return answer.stdout.strip()


@pytest.mark.slurm
def test_slurmrestd_listens_on_loopback_only(dev_slurm):
    address = urlsplit(dev_slurm["SLURM_REST_URL"])
    assert address.hostname == "127.0.0.1"
    assert_loopback_only(address.port, "slurmrestd")


@pytest.mark.slurm
def test_jwt_key_is_root_only(dev_slurm):
    info = os.stat(dev_slurm["SLURM_JWT_KEY_FILE"])
    assert (info.st_uid, info.st_mode & 0o777) == (0, 0o600)


@pytest.mark.slurm
def test_ping_and_version(rest):
    assert rest.version == "v0.0.38"
    assert any(p["ping"] == "UP" for p in rest.ping())


@pytest.mark.slurm
def test_submit_as_alice_then_cancel(rest, dev_slurm, alice_dir):
    job_id = rest.submit("alice", _job(alice_dir), "#!/bin/bash\nsleep 300\n")
    try:
        # squeue, not the REST API, says who owns it: the job is alice's, not root's.
        assert _squeue(dev_slurm["SLURM_CONF"], job_id, "%u|%P") == "alice|viz"
        seen = rest.job("alice", job_id)
        assert seen["job_id"] == job_id and seen["user_name"] == "alice"
        assert job_id in {j["job_id"] for j in rest.jobs()}
    finally:
        rest.cancel("alice", job_id)
    assert wait_for(lambda: rest.job("alice", job_id)["job_state"] == "CANCELLED", timeout=60)


@pytest.mark.slurm
def test_bob_cannot_cancel_alices_job(rest, alice_dir):
    job_id = rest.submit("alice", _job(alice_dir), "#!/bin/bash\nsleep 300\n")
    try:
        with pytest.raises(SlurmRefused):
            rest.cancel("bob", job_id)
        assert rest.job("alice", job_id)["job_state"] in ("PENDING", "RUNNING")
    finally:
        rest.cancel("alice", job_id)


@pytest.mark.slurm
def test_unknown_job_is_none(rest):
    assert rest.job("alice", 99999999) is None


@pytest.mark.slurm
def test_partitions(rest):
    assert {"compute", "viz", "group1"} <= {p["name"] for p in rest.partitions()}


@pytest.mark.slurm
def test_refusal_carries_slurms_reason(rest, alice_dir):
    with pytest.raises(SlurmRefused) as caught:
        rest.submit("alice", _job(alice_dir, partition="no-such-partition"), "#!/bin/bash\ntrue\n")
    assert "Invalid partition" in caught.value.message
    assert caught.value.to_dict()["error"] == "slurm_refused"


@pytest.mark.slurm
def test_wrong_key_is_unavailable(dev_slurm):
    client = SlurmRest(dev_slurm["SLURM_REST_URL"], TokenSigner(b"not the key" * 3))
    with pytest.raises(SlurmUnavailable, match="token"):
        client.partitions()


@pytest.mark.unit
def test_unreachable_url_is_unavailable():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]   # bound, never listening: connections are refused
        client = SlurmRest(f"http://127.0.0.1:{port}", TokenSigner(KEY), timeout=2, connect_timeout=2)
        with pytest.raises(SlurmUnavailable) as caught:
            client.ping()
    assert caught.value.headers.get("Retry-After")
    assert caught.value.to_dict()["error"] == "slurm_unavailable"


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.mark.unit
def test_token_claims():
    clock = Clock()
    token = TokenSigner(KEY, lifetime=300, clock=clock).token("alice")
    claims = jwt.decode(token, KEY, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"sun": "alice", "iat": 1_000_000, "exp": 1_000_300}


@pytest.mark.unit
def test_token_is_reused_until_near_expiry():
    clock = Clock()
    signer = TokenSigner(KEY, lifetime=300, renew_before=60, clock=clock)
    first = signer.token("alice")
    clock.now += 200
    assert signer.token("alice") == first
    clock.now += 41   # 59 s left: renewed
    renewed = signer.token("alice")
    assert renewed != first
    assert jwt.decode(renewed, KEY, algorithms=["HS256"], options={"verify_exp": False})["iat"] == 1_000_241


@pytest.mark.unit
def test_tokens_are_per_user():
    signer = TokenSigner(KEY, clock=Clock())
    alice, bob = signer.token("alice"), signer.token("bob")
    assert alice != bob
    assert jwt.decode(bob, KEY, algorithms=["HS256"], options={"verify_exp": False})["sun"] == "bob"


@pytest.mark.unit
def test_signer_never_shows_its_key_or_tokens():
    signer = TokenSigner(KEY, clock=Clock())
    token = signer.token("alice")
    assert KEY.decode() not in repr(signer) and token not in repr(signer)


@pytest.fixture(scope="module")
def unix_socket_restd(dev_slurm):
    """A second slurmrestd of the same cluster, listening on a unix socket only."""
    restd = UnixSocketRestd(dev_slurm["SLURM_CONF"]).start()
    yield restd.path
    restd.cleanup()


@pytest.mark.slurm
def test_unix_socket(unix_socket_restd, dev_slurm, alice_dir):
    client = SlurmRest(f"unix:{unix_socket_restd}", TokenSigner.from_file(dev_slurm["SLURM_JWT_KEY_FILE"]))
    try:
        assert client.version == "v0.0.38"
        assert any(p["ping"] == "UP" for p in client.ping())
        job_id = client.submit("alice", _job(alice_dir), "#!/bin/bash\nsleep 300\n")
        client.cancel("alice", job_id)
        # Every call went over one kept-alive connection.
        assert client._http.connections_opened == 1
    finally:
        client.close()


@pytest.mark.unit
def test_unix_socket_without_a_server_is_unavailable(tmp_path):
    client = SlurmRest(f"unix:{tmp_path}/none.socket", TokenSigner(KEY), timeout=2, connect_timeout=2)
    with pytest.raises(SlurmUnavailable) as caught:
        client.ping()
    assert str(tmp_path) not in caught.value.message   # no server paths in answers


def _spec(**fields):
    from hpcportal.slurm.job import JobSpec
    return JobSpec(script="#!/bin/bash\ntrue\n", script_path="/j/script.sh", workdir="/j", output="/j/o-%j",
                   error="/j/e-%j", comment="hpcportal:abc", **fields)


ALICE = User(name="alice", uid=2001, gid=2001, home="/home/alice")


@pytest.mark.unit
def test_the_model_becomes_the_rest_job_description():
    job = job_description(_spec(name="결과 파일", partition="viz", nodes="1-2", tasks_per_node=2, cpus_per_task=4,
                                memory="16G", time="1-00:00:30", account="a1", qos="high", gpus=1,
                                dependency="afterok:12", array="0-3%2",
                                options=(("nice", None), ("no-requeue", None), ("begin", "now+1hour"),
                                         ("mem-per-cpu", "1G"), ("time", "5"))), ALICE)
    assert job == {
        "name": "결과 파일", "partition": "viz", "nodes": [1, 2], "tasks_per_node": 2, "tasks": 2,
        "cpus_per_task": 4, "memory_per_node": 16384, "time_limit": 1441, "account": "a1", "qos": "high",
        "gres": "gpu:1", "dependency": "afterok:12", "array": "0-3%2", "nice": 100, "no_requeue": True,
        "begin_time": "now+1hour", "current_working_directory": "/j", "standard_output": "/j/o-%j",
        "standard_error": "/j/e-%j", "comment": "hpcportal:abc",
        "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/alice", "USER": "alice",
                        "LOGNAME": "alice", "SHELL": "/bin/bash", "LANG": "C.UTF-8"}}


@pytest.mark.unit
@pytest.mark.parametrize("option", ["exclude", "tmp", "hint", "contiguous", "overcommit", "ntasks-per-gpu"])
def test_an_option_slurmrestd_cannot_take_is_refused_by_name(option):
    with pytest.raises(SlurmRefused) as caught:
        job_description(_spec(options=((option, "x"),)), ALICE)
    assert f"--{option}" in caught.value.message and caught.value.code == "slurm_option_unsupported"
