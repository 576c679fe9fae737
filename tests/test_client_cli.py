"""The ``hpcportal`` command against a real daemon and the local Slurm: uploads (resumed
after the command was killed), submit --wait, logs -f, cancel, --json, and errors."""

import configparser
import hashlib
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess

import pytest
import requests

from support.client import MiB, cli_command, cli_env, run_cli, upload_bytes, write_random
from support.client import portal  # noqa: F401 (a fixture)
from support.daemon import REPO, auth_headers
from support.slurm import slurm_conf  # noqa: F401 (a fixture)
from support.waiting import wait_for

pytestmark = pytest.mark.slurm


def _json(done):
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _one_error_line(done, *words):
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcportal: error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_upload_a_korean_name_with_spaces_list_and_download(portal, tmp_path):
    folder = tmp_path / "입력 자료"
    folder.mkdir()
    data = "x,y\n1,2\n한글,값\n".encode() * 5000
    source = folder / "결과 파일.csv"
    source.write_bytes(data)
    cache = str(tmp_path / "cache")

    uploaded = _json(run_cli(portal, "upload", str(source), "--job-id", "tmp-42", "--json", cache=cache))
    assert uploaded["filename"] == "결과 파일.csv" and uploaded["size"] == len(data)
    assert uploaded["sha256"] == hashlib.sha256(data).hexdigest()
    assert uploaded["job_id"] == "tmp-42" and uploaded["file_id"]
    assert os.listdir(os.path.join(cache, "hpcportal", "uploads")) == []  # finished: no state left

    listed = _json(run_cli(portal, "files", "--job-id", "tmp-42", "--json"))
    assert [f["file_id"] for f in listed] == [uploaded["file_id"]]
    table = run_cli(portal, "files")
    assert table.returncode == 0 and "결과 파일.csv" in table.stdout and uploaded["file_id"] in table.stdout

    target = tmp_path / "받은 파일"
    target.mkdir()
    got = _json(run_cli(portal, "download", uploaded["file_id"], "-o", str(target), "--json"))
    assert got["path"] == str(target / "결과 파일.csv")
    assert (target / "결과 파일.csv").read_bytes() == data
    nowhere = str(tmp_path / "없는 폴더" / "x.csv")
    _one_error_line(run_cli(portal, "download", uploaded["file_id"], "-o", nowhere), "No such file", nowhere)


def test_an_upload_killed_midway_resumes_where_it_stopped(portal, tmp_path):
    size = 96 * MiB + 12345
    source = write_random(str(tmp_path / "큰 파일.bin"), size)
    cache = str(tmp_path / "cache")
    state_dir = os.path.join(cache, "hpcportal", "uploads")
    args = ("upload", source, "--chunk-size", "1MiB", "--parallel", "2", "--json")
    first = subprocess.Popen(cli_command(*args), env=cli_env(portal, cache=cache), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def state_file():
            names = os.listdir(state_dir) if os.path.isdir(state_dir) else []
            return next((name for name in names if name.endswith(".json")), None)
        state_file = wait_for(state_file, timeout=30, interval=0.01, message="the upload's state file")
        with open(os.path.join(state_dir, state_file)) as handle:
            upload_id = json.load(handle)["upload_id"]
        status_url = f"{portal.url}/api/v2/files/upload/{upload_id}"

        def some_chunks():
            status = requests.get(status_url, headers=auth_headers("alice"), timeout=10).json()
            return status if len(status["received_chunks"]) >= 3 else None
        wait_for(some_chunks, timeout=30, interval=0.01, message="the first chunks")
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    status = requests.get(status_url, headers=auth_headers("alice"), timeout=10).json()
    assert 3 <= len(status["received_chunks"]) < status["total_chunks"], "killed too late to test a resume"

    before = upload_bytes(portal)
    second = run_cli(portal, *args, "--progress", cache=cache)
    uploaded = _json(second)
    assert "resuming, " in second.stderr and "100%" in second.stderr
    with open(source, "rb") as handle:
        assert uploaded["sha256"] == hashlib.sha256(handle.read()).hexdigest()
    assert uploaded["size"] == size and uploaded["filename"] == "큰 파일.bin"
    # Only what the portal did not have was sent again (less when a chunk that was in
    # flight at the kill was written after the status above).
    sent_again = upload_bytes(portal) - before
    assert size - status["received_bytes"] - 2 * MiB <= sent_again <= size - status["received_bytes"]
    assert os.listdir(state_dir) == []


def test_an_upload_rides_out_a_daemon_restart(portal, tmp_path):
    size = 64 * MiB
    source = write_random(str(tmp_path / "재시작 중.bin"), size)
    cache = str(tmp_path / "cache")
    before = upload_bytes(portal)
    upload = subprocess.Popen(cli_command("upload", source, "--chunk-size", "1MiB", "--parallel", "2", "--json"),
                              env=cli_env(portal, cache=cache), cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: upload_bytes(portal) - before >= 3 * MiB, timeout=30, interval=0.01,
                 message="the first chunks")
        portal.kill()
        assert upload.poll() is None, "the upload ended before the daemon was killed"
        portal.start()
        out, err = upload.communicate(timeout=120)
    finally:
        upload.kill()
    assert upload.returncode == 0, err
    with open(source, "rb") as handle:
        assert json.loads(out)["sha256"] == hashlib.sha256(handle.read()).hexdigest()


def test_submit_wait_exits_by_the_jobs_end(portal, tmp_path):
    data = tmp_path / "입력 값.txt"
    data.write_text("사과 3개\n")
    file_id = _json(run_cli(portal, "upload", str(data), "--json"))["file_id"]
    good = tmp_path / "good job.sh"
    good.write_text('#!/bin/bash\necho "read: $(cat "$INPUT_FILE_0")"\n')
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\necho failing\nexit 4\n")
    env = cli_env(portal)
    runs = {name: subprocess.Popen(cli_command("submit", *args), env=env, cwd=REPO, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for name, args in (("good", (str(good), "--file", file_id, "--wait", "--json", "--interval", "0.5")),
                               ("bad", (str(bad), "--name", "실패 작업", "--wait", "--interval", "0.5")))}
    done = {name: (proc.wait(timeout=120), *proc.communicate()) for name, proc in runs.items()}

    code, out, err = done["good"]
    assert code == 0, err
    finished = json.loads(out)
    assert finished["state"] == "COMPLETED" and finished["jobId"] and finished["name"] == "good job.sh"
    assert run_cli(portal, "logs", finished["jobId"]).stdout == "read: 사과 3개\n"

    code, out, err = done["bad"]
    assert code == 3, err
    assert "FAILED" in out and "exit code 4:0" in out and "Traceback" not in err

    answer = _json(run_cli(portal, "submit", "-", "--time", "5", "--json", stdin="#!/bin/bash\ntrue\n"))
    assert answer["success"] is True and answer["jobId"].isdigit() and answer["submissionId"]
    refused = run_cli(portal, "submit", str(good), "--memory", "lots")
    _one_error_line(refused, "memory", "HTTP 400")


def test_submit_from_a_template_with_its_image(portal, tmp_path):
    from support.sifbuild import build_sif
    build_sif(os.path.join(portal.shared.images, "compute", "python_3.11.sif"))
    shutil.copy(os.path.join(REPO, "examples", "templates", "official", "python-script.yaml"),
                os.path.join(portal.shared.templates, "official"))

    def listed(command, key):
        done = run_cli(portal, command, "--json")
        return done.returncode == 0 and key in {item["id"] for item in json.loads(done.stdout)}
    wait_for(lambda: listed("images", "python_3.11") and listed("templates", "official.python-script"),
             timeout=60, message="the catalogs")
    assert "python_3.11" in run_cli(portal, "images", "--partition", "compute").stdout
    assert "official.python-script" in run_cli(portal, "templates", "--category", "general").stdout

    script = tmp_path / "hello.py"
    script.write_text('import sys\nprint("인자:", sys.argv[1:])\n')
    script_id = _json(run_cli(portal, "upload", str(script), "--json"))["file_id"]
    done = run_cli(portal, "submit", "--template", "official.python-script", "--param", "args=--epochs 3",
                   "--file", f"script={script_id}", "--cpus", "2", "--wait", "--json", "--interval", "0.5")
    job = _json(done)
    assert job["state"] == "COMPLETED" and job["template"]["id"] == "official.python-script"
    assert job["image"]["id"] == "python_3.11"
    assert "인자: ['--epochs', '3']" in run_cli(portal, "logs", job["jobId"]).stdout


def test_logs_follow_the_live_output_and_cancel(portal, tmp_path):
    script = tmp_path / "lines.sh"
    script.write_text('#!/bin/bash\nfor i in 1 2 3 4; do echo "줄 $i"; sleep 0.5; done\necho 끝 >&2\n')
    job_id = run_cli(portal, "submit", str(script)).stdout.strip()
    assert job_id.isdigit()
    followed = run_cli(portal, "logs", job_id, "-f")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "".join(f"줄 {i}\n" for i in range(1, 5))
    # The stream ended because the job did: it has ended by now.
    assert _json(run_cli(portal, "show", job_id, "--json"))["state"] == "COMPLETED"
    assert _json(run_cli(portal, "logs", job_id, "--stderr", "--json"))["data"] == "끝\n"
    lines = run_cli(portal, "logs", job_id, "-f", "--json").stdout.splitlines()
    assert "".join(json.loads(line)["data"] for line in lines) == followed.stdout

    sleeper = run_cli(portal, "submit", "-", "--name", "sleeper", stdin="sleep 300\n").stdout.strip()
    cancelled = _json(run_cli(portal, "cancel", sleeper, "--json"))
    assert cancelled["success"] is True
    waited = run_cli(portal, "wait", sleeper, "--interval", "0.5", "--json")
    assert waited.returncode == 3 and json.loads(waited.stdout)["state"] == "CANCELLED"
    _one_error_line(run_cli(portal, "cancel", sleeper), "already ended", "HTTP 409")
    listed = _json(run_cli(portal, "jobs", "--json"))
    assert {job_id, sleeper} <= {j["jobId"] for j in listed}
    table = run_cli(portal, "jobs", "--state", "CANCELLED")
    # The first column holds the ids (a small id can also occur inside a date).
    listed_ids = [line.split()[0] for line in table.stdout.splitlines()[1:] if line.strip()]
    assert sleeper in listed_ids and job_id not in listed_ids, table.stdout


def test_who_images_templates_and_where_the_token_comes_from(portal, tmp_path):
    me = _json(run_cli(portal, "me", "--json"))
    assert me["user"] == "alice" and me["uid"] == 2001
    assert _json(run_cli(portal, "--json", "images")) == requests.get(
        portal.url + "/api/v2/apptainer/images", headers=auth_headers("alice"), timeout=10).json()["images"]
    assert isinstance(_json(run_cli(portal, "templates", "--json")), list)

    token_file = tmp_path / "token"
    token_file.write_text(auth_headers("bob")["Authorization"].split()[1] + "\n")
    by_option = run_cli(portal, "me", "--token-file", str(token_file), PORTAL_TOKEN="")
    assert by_option.stdout.startswith("bob ")
    by_variable = run_cli(portal, "me", PORTAL_TOKEN="", PORTAL_TOKEN_FILE=str(token_file))
    assert by_variable.stdout.startswith("bob ")
    by_url = run_cli(portal, "me", "--url", portal.url, PORTAL_URL="")
    assert by_url.stdout.startswith("alice ")


def test_errors_are_one_line_without_a_traceback(portal, tmp_path):
    _one_error_line(run_cli(portal, "me", "--token", "not-a-token"), "refused the token")
    expired = auth_headers("alice", exp=1)["Authorization"].split()[1]
    _one_error_line(run_cli(portal, "jobs", PORTAL_TOKEN=expired), "refused the token")
    with socket_closed() as url:
        _one_error_line(run_cli(portal, "me", "--url", url), "cannot reach the portal", url)
    missing = run_cli(portal, "me", PORTAL_URL="")
    assert missing.returncode == 2
    _one_error_line(missing, "--url", "PORTAL_URL")
    _one_error_line(run_cli(portal, "me", PORTAL_TOKEN=""), "no token")
    _one_error_line(run_cli(portal, "show", "999999"), "no job 999999", "HTTP 404")
    _one_error_line(run_cli(portal, "upload", str(tmp_path / "없는 파일")), "없는 파일")
    _one_error_line(run_cli(portal, "submit", "--param", "x=1"), "SCRIPT")


class socket_closed:
    """A loopback URL nobody listens on."""

    def __enter__(self):
        from support.daemon import free_port
        return f"http://127.0.0.1:{free_port()}"

    def __exit__(self, *exc):
        return False


@pytest.mark.unit
def test_the_console_script_is_declared_and_resolves():
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    scripts = dict(line.split("=", 1) for line in config["options.entry_points"]["console_scripts"].split("\n")
                   if "=" in line)
    scripts = {name.strip(): target.strip() for name, target in scripts.items()}
    assert scripts["hpcportal"] == "hpcportal.client.cli:main"
    module, _, function = scripts["hpcportal"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    assert "requests" in config["options"]["install_requires"]


@pytest.mark.unit
def test_every_hpcportal_command_in_the_guide_parses():
    from hpcportal.client.cli import build_parser
    with open(os.path.join(REPO, "docs", "client.md"), encoding="utf-8") as handle:
        text = handle.read()
    lines = [line for block in re.findall(r"```sh\n(.*?)```", text, re.S) for line in block.splitlines()]
    commands = []
    for line in lines:
        for match in re.finditer(r"(?:^|[\s(])hpcportal ([^|&)#]+)", line.split("  #")[0]):
            commands.append(shlex.split(match.group(1)))
    assert len(commands) >= 20, commands
    parser = build_parser()
    for args in commands:
        try:
            parser.parse_args(args)
        except SystemExit:
            raise AssertionError(f"docs/client.md: `hpcportal {' '.join(args)}` is not a valid command") from None
