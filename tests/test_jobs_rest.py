"""The slurmrestd backend in a real daemon on the real local Slurm: a head without
Slurm's commands serves the whole job flow, ``auto`` picks slurmrestd only when it
answers (and /readyz says which and why), refusals and lost answers keep the
command path's contract. The job tests of the other modules run through both
backends (``slurm_backends`` marker)."""

import os
import socket
import subprocess
import threading
from urllib.parse import urlsplit

import pytest
from support.backends import UnixSocketRestd, rest_settings
from support.waiting import wait_for
from support.slurm import jobs_config, output, slurm_conf, squeue_comments, wait_finished  # noqa: F401

SUBMIT = "/api/slurm/jobs/submit"

pytestmark = [pytest.mark.slurm, pytest.mark.databases("sqlite")]


def _squeue(conf, job_id, fmt):
    answer = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", fmt], capture_output=True,
                            text=True, env={**os.environ, "SLURM_CONF": conf}, timeout=60, check=True)
    return answer.stdout.strip()


def _empty_bin(shared_dir):
    folder = os.path.join(shared_dir.root, "no-slurm-commands")
    os.makedirs(folder, mode=0o755)
    return folder


def _readiness(daemon):
    anonymous = daemon.get("/readyz").json()["checks"]["slurm"]
    admin = daemon.get("/readyz", user="alice", admin=True).json()["checks"]["slurm"]
    return anonymous, admin


def test_a_head_without_slurm_commands_serves_the_whole_job_flow(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, bin_dir=_empty_bin(shared_dir), **rest_settings()))
    anonymous, admin = _readiness(daemon)
    assert anonymous == {"ok": True, "backend": "rest"}
    assert admin["detail"].startswith("rest: slurm.backend is rest; slurmrestd answers (REST API v0.0.38)")

    partitions = daemon.get("/api/slurm/partitions", user="alice")
    assert partitions.status_code == 200, partitions.text
    names = {p["name"]: p for p in partitions.json()["partitions"]}
    assert {"compute", "viz", "group1"} <= set(names) and names["compute"]["default"] is True
    assert names["viz"]["cpus"] == 64 and names["viz"]["memory_mb"] == 65536
    assert names["viz"]["node_states"] and set(names["viz"]["node_states"]) <= {"idle", "mix", "alloc"}

    # The script's own #SBATCH options reach Slurm through the model: slurmrestd never reads them.
    script = "#!/bin/bash\n#SBATCH --time=7\n#SBATCH --cpus-per-task=2\n#SBATCH --nice=5\nsleep 300\n"
    answer = daemon.post(SUBMIT, user="alice", json={"jobName": "결과 파일", "partition": "viz", "script": script})
    assert answer.status_code == 200, answer.text
    long_job = answer.json()["jobId"]
    assert _squeue(slurm_conf, long_job, "%u|%P|%l|%c|%y|%j") == "alice|viz|7:00|2|5|결과 파일"
    listed = daemon.get("/api/slurm/jobs", user="alice").json()
    assert [j["jobId"] for j in listed["jobs"]] == [long_job] and "slurm" not in listed
    assert daemon.get(f"/api/slurm/jobs/{long_job}", user="alice").json()["state"] in ("PENDING", "RUNNING")
    cancelled = daemon.delete(f"/api/slurm/jobs/{long_job}", user="alice")
    assert cancelled.status_code == 200, cancelled.text
    assert wait_finished(daemon, "alice", long_job)["state"] == "CANCELLED"

    answer = daemon.post(SUBMIT, user="alice", json={"jobName": "echo", "script": "#!/bin/bash\necho \"home=$HOME\"\nid -un\n"})
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["jobId"]
    assert wait_finished(daemon, "alice", job_id)["state"] == "COMPLETED"
    assert output(daemon, "alice", job_id) == "home=/home/alice\nalice\n"
    # Not one command ran (or was tried: a missing one is counted too); slurmrestd was asked instead.
    metrics = daemon.get("/metrics").text
    assert "hpcportal_slurm_calls_total{" not in metrics
    assert 'hpcportal_slurm_rest_calls_total{call="POST job",outcome="200"} 2.0' in metrics
    assert 'hpcportal_slurm_rest_calls_total{call="GET jobs",outcome="200"}' in metrics
    # The log says which backend and why; the key never reaches it.
    logs = daemon.logs()
    assert "Slurm backend: rest (slurm.backend is rest; slurmrestd answers (REST API v0.0.38))" in logs
    with open(rest_settings()["jwt_key_file"], "rb") as handle:
        key = handle.read()
    assert key.decode("latin-1") not in logs and key.hex() not in logs


def test_an_option_slurmrestd_cannot_take_is_refused_by_name(daemon_factory, shared_dir, slurm_conf):
    daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, **rest_settings()))
    answer = daemon.post(SUBMIT, user="alice", json={"jobName": "x",
                                                      "script": "#!/bin/bash\n#SBATCH --exclude=node9\ntrue\n"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "slurm_option_unsupported" and "--exclude" in answer.json()["message"]
    assert os.listdir(os.path.join(shared_dir.uploads, "alice", "jobs")) == []
    # A value slurmrestd cannot read is Slurm's refusal, with its reason.
    answer = daemon.post(SUBMIT, user="alice", json={"jobName": "x",
                                                      "script": "#!/bin/bash\n#SBATCH --signal=B:USR1@60\ntrue\n"})
    assert answer.status_code == 422, answer.text
    assert "Invalid SIGNAL specification" in answer.json()["message"]


def test_auto_uses_slurmrestd_only_when_it_answers(daemon_factory, shared_dir, slurm_conf):
    settings = rest_settings()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        down = daemon_factory(jobs_config(shared_dir, slurm_conf, **dict(
            settings, backend="auto", rest_url=f"http://127.0.0.1:{taken.getsockname()[1]}")))
        anonymous, admin = _readiness(down)
        assert anonymous == {"ok": True, "backend": "cli"}
        assert admin["detail"].startswith("cli: slurm.backend is auto; slurmrestd does not answer")
        assert "127.0.0.1" not in str(anonymous)
        answer = down.post(SUBMIT, user="alice", json={"jobName": "fallback", "script": "#!/bin/bash\ntrue\n"})
        assert answer.status_code == 200, answer.text
    assert 'hpcportal_slurm_calls_total{command="sbatch",outcome="ok"} 1.0' in down.get("/metrics").text
    up = daemon_factory(jobs_config(shared_dir, slurm_conf, **dict(settings, backend="auto")), shared=shared_dir)
    assert _readiness(up)[0] == {"ok": True, "backend": "rest"}
    without_url = daemon_factory(jobs_config(shared_dir, slurm_conf, backend="auto"), shared=shared_dir)
    anonymous, admin = _readiness(without_url)
    assert anonymous["backend"] == "cli" and "slurm.rest_url is not set" in admin["detail"]


class DroppingProxy:
    """A loopback HTTP relay to slurmrestd that hands every answer back, except those
    of job submissions: it forwards the submission, then closes the connection."""

    def __init__(self, target):
        address = urlsplit(target)
        self.target = (address.hostname, address.port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.dropped = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    @staticmethod
    def _read_message(sock, buffer=b""):
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                return None, b""
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return head + b"\r\n\r\n" + rest[:length], rest[length:]

    def _relay(self, client):
        with client, socket.create_connection(self.target) as upstream:
            pending = b""
            while True:
                request, pending = self._read_message(client, pending)
                if request is None:
                    return
                upstream.sendall(request)
                answer, _ = self._read_message(upstream)
                if request.startswith(b"POST ") and b"/job/submit" in request.split(b"\r\n", 1)[0]:
                    self.dropped += 1
                    return  # the job exists; its answer is lost
                client.sendall(answer)

    def close(self):
        self.server.close()


def test_a_lost_rest_answer_is_recovered_through_the_comment(daemon_factory, shared_dir, slurm_conf):
    settings = rest_settings()
    proxy = DroppingProxy(settings["rest_url"])
    try:
        daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, **dict(settings, rest_url=proxy.url)))
        answer = daemon.post(SUBMIT, user="alice", json={"jobName": "lost", "script": "#!/bin/bash\necho found\n"})
        assert answer.status_code == 200, answer.text
        reply = answer.json()
        assert proxy.dropped == 1
        assert squeue_comments(slurm_conf)[reply["jobId"]] == f"hpcportal:{reply['submissionId']}"
        # Exactly one job carries the submission id: nothing was submitted twice.
        assert list(squeue_comments(slurm_conf).values()).count(f"hpcportal:{reply['submissionId']}") == 1
        assert wait_finished(daemon, "alice", reply["jobId"])["state"] == "COMPLETED"
        assert output(daemon, "alice", reply["jobId"]) == "found\n"
    finally:
        proxy.close()


def test_an_unreachable_slurmrestd_is_503_with_retry_after_and_no_switch(daemon_factory, shared_dir, slurm_conf):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, **dict(
            rest_settings(), rest_url=f"http://127.0.0.1:{taken.getsockname()[1]}")))
        anonymous, admin = _readiness(daemon)
        # backend: rest never falls back to the commands, even though they are there.
        assert anonymous == {"ok": True, "backend": "rest"}
        assert admin["detail"].startswith("rest: slurm.backend is rest; slurmrestd does not answer")
        answer = daemon.post(SUBMIT, user="alice", json={"jobName": "down", "script": "#!/bin/bash\ntrue\n"})
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] and answer.json()["error"] == "slurm_unavailable"
        assert "127.0.0.1" not in answer.text  # where slurmrestd listens is not the caller's business
        assert not os.path.exists(os.path.join(shared_dir.uploads, "alice", "jobs")) or \
            os.listdir(os.path.join(shared_dir.uploads, "alice", "jobs")) == []
        listed = daemon.get("/api/slurm/jobs", user="alice").json()
        assert listed["jobs"] == [] and listed["slurm"]["reachable"] is False
    assert "hpcportal_slurm_calls_total{" not in daemon.get("/metrics").text


def test_auto_switches_between_calls_when_slurmrestd_comes_and_goes(daemon_factory, shared_dir, slurm_conf):
    restd = UnixSocketRestd(slurm_conf)
    try:
        daemon = daemon_factory(jobs_config(shared_dir, slurm_conf, **dict(
            rest_settings(), backend="auto", rest_url=f"unix:{restd.path}")))
        assert _readiness(daemon)[0]["backend"] == "cli"
        restd.start()
        # Re-checked every poll_interval (1 s here).
        wait_for(lambda: _readiness(daemon)[0]["backend"] == "rest", timeout=30, message="the switch to REST")
        answer = daemon.post(SUBMIT, user="alice", json={"jobName": "via socket", "script": "#!/bin/bash\ntrue\n"})
        assert answer.status_code == 200, answer.text
        assert 'hpcportal_slurm_rest_calls_total{call="POST job",outcome="200"} 1.0' in daemon.get("/metrics").text
        restd.stop()
        wait_for(lambda: _readiness(daemon)[0]["backend"] == "cli", timeout=30, message="the fall-back")
        assert "slurmrestd does not answer" in _readiness(daemon)[1]["detail"]
        answer = daemon.post(SUBMIT, user="alice", json={"jobName": "via sbatch", "script": "#!/bin/bash\ntrue\n"})
        assert answer.status_code == 200, answer.text
        assert 'hpcportal_slurm_calls_total{command="sbatch",outcome="ok"} 1.0' in daemon.get("/metrics").text
    finally:
        restd.cleanup()
