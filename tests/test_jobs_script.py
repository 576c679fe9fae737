"""The batch script builder and Slurm output parsing, without a daemon.

Scripts built here are run by the real bash, so quoting is checked by the
shell that will read it, not by a re-implementation."""

import json
import os
import subprocess

import pytest

from hpcportal.errors import ValidationError
from hpcportal.jobs.request import check_resources
from hpcportal.slurm import script as batch
from hpcportal.slurm import values
from hpcportal.slurm.directives import script_options
from hpcportal.slurm.job import JobSpec
from hpcportal.slurm.parse import exit_code_from_status, parse_sinfo, parse_squeue_json
from hpcportal.slurm.runner import SlurmAnswerLost, SlurmRefused, SlurmRunner, SlurmUnavailable, slurm_message

# In process: no daemon, no Slurm, no database server (`pytest -m unit`).
pytestmark = pytest.mark.unit


@pytest.mark.parametrize("given, expected", [
    ("16GB", "16G"), ("16G", "16G"), ("16gb", "16G"), ("16GiB", "16G"), ("16 GB", "16G"), ("512M", "512M"),
    ("512MB", "512M"), ("1T", "1T"), ("1TB", "1T"), ("1.5G", "1536M"), ("2048", "2G"), (2048, "2G"),
    ("100K", "1M"), ("3000", "3000M"),
])
def test_memory_is_normalised_for_sbatch(given, expected):
    assert values.slurm_memory(given) == expected


@pytest.mark.parametrize("given", ["", "lots", "16XB", "-1G", "1G\n#SBATCH --uid=0", "16 G B", 0, True, None,
                                   "1e3M", "i"])
def test_bad_memory_is_refused(given):
    with pytest.raises(ValueError):
        values.slurm_memory(given)


@pytest.mark.parametrize("given, expected", [
    ("60", "01:00:00"), (60, "01:00:00"), ("90:30", "01:30:30"), ("01:00:00", "01:00:00"),
    ("2-0", "2-00:00:00"), ("2-12", "2-12:00:00"), ("1-2:30", "1-02:30:00"), ("1-02:03:04", "1-02:03:04"),
    ("UNLIMITED", "UNLIMITED"), ("infinite", "UNLIMITED"), ("0:30", "00:00:30"),
])
def test_every_sbatch_time_format(given, expected):
    assert values.slurm_time(given) == expected


@pytest.mark.parametrize("given", ["", "1 hour", "0", 0, -5, "1-2-3", "01:00:00\n#SBATCH", "1:2:3:4", True, "a:b"])
def test_bad_time_is_refused(given):
    with pytest.raises(ValueError):
        values.slurm_time(given)


def test_check_resources_reports_every_field():
    with pytest.raises(ValidationError) as caught:
        check_resources({"jobName": "a\tb", "nodes": 0, "cpus": "x", "memory": "q", "time": "z",
                               "partition": "-p", "account": "a;b", "gpus": -1}, max_script_size=10)
    assert set(caught.value.errors) == {"jobName", "nodes", "cpus", "memory", "time", "partition", "account",
                                        "gpus", "script"}
    for field, value in (("jobName", "ok\n"), ("partition", "compute\n"), ("qos", "normal\n")):
        with pytest.raises(ValidationError) as caught:
            check_resources({"jobName": "x", "script": "true", field: value}, max_script_size=10)
        assert field in caught.value.errors
    ok = check_resources({"jobName": "x", "nodes": "2", "cpus": 4, "memory": "1G", "time": 30,
                                "script": "true"}, max_script_size=10)
    assert (ok["nodes"], ok["cpus"], ok["memory"], ok["time"]) == (2, 4, "1G", "00:30:00")


def test_directives_refuse_anything_that_could_add_a_line_or_option():
    for value in ("x\n#SBATCH --uid=0", "", "x\ry", "a\x00b", "a\u2028b", "tab\there"):
        with pytest.raises(ValueError):
            batch.directive_lines([("job-name", value)])
    with pytest.raises(ValueError):
        batch.directive_lines([("uid=0 --x", "1")])
    # Values outside the plain set are quoted as sbatch reads them back (checked against the
    # real sbatch in tests/test_jobs_names.py).
    assert batch.directive_lines([("job-name", "데이터 분석 (1)"), ("job-name", 'a "b" \\ #c'),
                                  ("exclusive", None), ("mem", "16G")]) == [
        '#SBATCH --job-name="데이터 분석 (1)"', '#SBATCH --job-name="a \\"b\\" \\\\ #c"',
        "#SBATCH --exclusive", "#SBATCH --mem=16G"]


@pytest.mark.parametrize("name", ["데이터 분석 (1)", "a b", "x" * 128, "it's \"q\"", "#1", "é,ü;漢"])
def test_job_names_are_any_printable_text(name):
    assert values.job_name(name) == name
    assert check_resources({"jobName": name, "script": "true"}, max_script_size=10)["job_name"] == name


@pytest.mark.parametrize("name", ["", "   ", "x" * 129, "a\nb", "a\rb", "a\tb", "a\x00b", "a\x1bb", "a\u2028b",
                                  "a\x85b", 5, ["a"], {"a": 1}])
def test_job_names_refused(name):
    with pytest.raises(ValueError):
        values.job_name(name)


@pytest.mark.parametrize("path", ["/shared/uploads/alice/files/tmp-1/데이터 (1).csv", "/a/b, c: d.txt",
                                  "/a/it's $(id) `x`.txt", "/a/../b/./c"])
def test_input_paths_take_any_printable_name(path):
    assert batch.input_path(path) == os.path.normpath(path)


@pytest.mark.parametrize("path", ["relative.txt", "/a\nb", "/a\rb", "/a\x00b", "/a\tb", "/" + "x" * 5000, 7, None])
def test_input_paths_refused(path):
    with pytest.raises(ValueError):
        batch.input_path(path)


def run_bash(text, tmp_path):
    path = tmp_path / "job.sh"
    path.write_text(text)
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=30)


def test_exported_values_reach_bash_unchanged(tmp_path):
    values = {"PLAIN": "/shared/a.txt", "SPACES": "a b  c", "QUOTES": "it's \"q\" $HOME `id` $(id)",
              "NEWLINE": "one\n#SBATCH --uid=0\ntwo", "TAB": "a\tb", "BACKSLASH": "a\\nb\\", "EMPTY": "",
              "UNICODE": "é ü 漢", "CONTROL": "\x01\x7f"}
    lines = batch.export_lines(values)
    assert all("\n" not in line for line in lines)
    check = "\n".join(lines) + "\n" + "".join(f'printf "%s\\0" "${name}"\n' for name in values)
    answer = run_bash(check, tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split("\0")[:-1] == list(values.values())
    with pytest.raises(ValueError):
        batch.export_lines({"BAD NAME": "x"})
    with pytest.raises(ValueError):
        batch.bash_quote("nul\x00")


def test_user_script_is_its_own_file_run_by_its_interpreter(tmp_path):
    body_path = str(tmp_path / "script.sh")
    body = "#!/usr/bin/env python3\nprint('from python')\n"
    (tmp_path / "script.sh").write_text(body)
    text = batch.render_batch_script(JobSpec(script=body, script_path=body_path, name="x", comment="hpcportal:abc",
                                             environment={"INPUT_FILE_COUNT": "0"}))
    assert text.startswith("#!/bin/bash -l\n#SBATCH --job-name=x\n#SBATCH --comment=hpcportal:abc\n")
    assert body not in text
    assert run_bash(text, tmp_path).stdout == "from python\n"
    assert batch.interpreter_of("echo hi") == ["/bin/bash"]
    assert batch.interpreter_of("#!/bin/sh -e\n") == ["/bin/sh", "-e"]


def test_container_command_and_unsafe_binds(tmp_path):
    job = JobSpec(script="true\n", script_path="/j/script.sh", image="/i/p.sif", apptainer="/opt/apptainer",
                  exec_options=("--nv",), binds=("/j", "/shared/data"))
    assert batch.render_batch_script(job).endswith(
        "exec /opt/apptainer exec --nv --bind /j --bind /shared/data /i/p.sif /bin/bash /j/script.sh\n")
    assert batch.bind_path_ok("/data/two words (1)")
    for bind in ("/a,/b", "/a\n", "relative"):
        with pytest.raises(ValueError):
            batch.render_batch_script(JobSpec(script="", script_path="/j/s", image="/i", binds=(bind,)))


def test_one_job_lists_its_resources_then_the_users_options_then_the_portals():
    job = JobSpec(script="true\n", script_path="/j/s.sh", name="t", partition="compute", memory="1G", gpus=2,
                  output="/j/slurm-%j.out", workdir="/j", comment="hpcportal:x", export="NONE")
    mine = script_options("#SBATCH --mem-per-cpu=2G --gres=gpu:1 --array=1-4 -p viz\n")
    job = job.with_script_options(mine)
    # The body's --mem speaks for --mem-per-cpu too, as sbatch's command line does over a script.
    assert job.directives() == [
        ("job-name", "t"), ("partition", "compute"), ("mem", "1G"), ("gres", "gpu:2"), ("array", "1-4"),
        ("output", "/j/slurm-%j.out"), ("chdir", "/j"), ("comment", "hpcportal:x"), ("export", "NONE")]
    text = batch.render_batch_script(job)
    assert text.splitlines()[-1] == "exec /bin/bash /j/s.sh"
    assert ": hpcportal batch options end here" in text.splitlines()


def test_squeue_json_of_slurm_22_05():
    document = {"meta": {}, "errors": [], "jobs": [{
        "job_id": 7, "name": "n", "user_name": "alice", "user_id": 2001, "partition": "compute",
        "job_state": "FAILED", "state_reason": "NonZeroExitCode", "exit_code": 768, "submit_time": 1795858933,
        "start_time": 1795858934, "end_time": 1795858935, "nodes": "localhost", "comment": "hpcportal:abc",
        "current_working_directory": "/j"}]}
    job, = parse_squeue_json(json.dumps(document))
    assert (job["job_id"], job["state"], job["exit_code"], job["reason"]) == ("7", "FAILED", "3:0", "NonZeroExitCode")
    assert exit_code_from_status(15) == "0:15"
    with pytest.raises(SlurmUnavailable) as caught:
        parse_squeue_json(json.dumps({"errors": [{"description": "Failed while looking for jobs"}], "jobs": []}))
    assert caught.value.message.startswith("Slurm controller is not reachable")


def test_sinfo_partitions():
    parts = parse_sinfo("compute*|up|2|64|65536|infinite|gpu:a100:2|idle\ncompute*|up|1|8|4000|infinite|(null)|mix\n"
                        "viz|down|1|8|4000|1:00:00|(null)|down\n")
    assert parts[0] == {"name": "compute", "state": "UP", "default": True, "nodes": 3, "cpus": 136,
                        "memory_mb": 65536, "gpus": 4, "time_limit": "infinite", "node_states": ["idle", "mix"]}
    assert parts[1]["default"] is False and parts[1]["state"] == "DOWN"


def fake_command(folder, name, body):
    path = os.path.join(folder, name)
    with open(path, "w") as handle:
        handle.write("#!/bin/bash\n" + body)
    os.chmod(path, 0o755)


def test_runner_maps_failures(tmp_path):
    folder = str(tmp_path)
    fake_command(folder, "sbatch", "echo 'sbatch: error: Batch job submission failed: Invalid account' >&2; exit 1\n")
    fake_command(folder, "squeue", "echo 'squeue: error: Unable to contact slurm controller (connect failure)' >&2; exit 1\n")
    fake_command(folder, "scancel", "sleep 5\n")
    fake_command(folder, "sinfo", "kill -9 $$\n")
    fake_command(folder, "sacct", "env\n")
    runner = SlurmRunner(folder, conf="/etc/x/slurm.conf", timeout=1)
    with pytest.raises(SlurmRefused) as refused:
        runner.run("sbatch", [])
    assert refused.value.message == "Invalid account"
    with pytest.raises(SlurmUnavailable) as down:
        runner.run("squeue", [])
    assert down.value.message == "Slurm controller is not reachable: Unable to contact slurm controller (connect failure)"
    with pytest.raises(SlurmAnswerLost):
        runner.run("scancel", [])
    with pytest.raises(SlurmAnswerLost):
        runner.run("sinfo", [])
    with pytest.raises(SlurmUnavailable):
        runner.run("scontrol", [])  # not installed
    env = dict(line.split("=", 1) for line in runner.run("sacct", []).stdout.splitlines() if "=" in line)
    assert env["SLURM_CONF"] == "/etc/x/slurm.conf"
    assert not {k for k in env if k.startswith(("HPCPORTAL", "PYTEST"))}
    assert slurm_message("sbatch: error: A\nsbatch: error: B\n") == "A; B"


def test_runner_works_meanwhile_and_feeds_standard_input(tmp_path):
    """sbatch reads its script on standard input, and the portal's own work runs while it
    does: this sbatch answers only once that work is done (had it run afterwards, the
    command would wait out the runner's time-out)."""
    folder = str(tmp_path)
    done = tmp_path / "meanwhile-done"
    fake_command(folder, "sbatch", f'cat > "{tmp_path}/script"\n'
                                   f'while [ ! -e "{done}" ]; do sleep 0.01; done\necho 4242\n')
    runner = SlurmRunner(folder, timeout=10)
    answer = runner.run("sbatch", ["--parsable"], input="#!/bin/bash\necho 한글\n", meanwhile=done.touch)
    assert answer.stdout == "4242\n"
    assert (tmp_path / "script").read_text() == "#!/bin/bash\necho 한글\n"


def test_runner_stops_a_command_when_its_time_is_up(tmp_path):
    folder = str(tmp_path)
    fake_command(folder, "sbatch", f'echo $$ > "{tmp_path}/pid"; cat >/dev/null; exec sleep 30\n')
    runner = SlurmRunner(folder, timeout=0.5)
    with pytest.raises(SlurmAnswerLost):
        runner.run("sbatch", [], input="#!/bin/bash\n", meanwhile=lambda: None)
    # Killed and reaped, not left behind.
    assert not os.path.exists(f"/proc/{(tmp_path / 'pid').read_text().strip()}")
