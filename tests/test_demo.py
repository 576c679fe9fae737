"""``scripts/demo`` as a newcomer meets it: run as root from a checkout that only
root can enter (an admin's clone in /root), then the examples of the README and
the guides in docs/ pasted into another shell, as written.

The demo runs for real (its own shared folder, SQLite, the local Slurm, the
apptainer stand-in); its user is the test user alice, so that no account is
created. The copy of the checkout holds what the demo reads from it; its
``.venv`` is the project's (the copy's setup.cfg is the same, so ``scripts/venv``
installs nothing).
"""

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading

import pytest
import requests
import yaml
from support.daemon import REPO, SharedTree, free_port
from support.guides import guides
from support.slurm import FINAL, slurm_conf  # noqa: F401 (fixture)
from support.waiting import wait_for

# The two values of the guides' demo examples that name this one demo.
README_DEMO_DIR = "/tmp/hpcportal-demo"
README_API = "http://127.0.0.1:5000"
DEMO_USER = "alice"
CHECKOUT_PARTS = ("scripts", "examples", os.path.join("tests", "support"), "setup.cfg", "pyproject.toml")


def example_blocks(text):
    """(kind, code) of each fenced block right below ``<!-- example: demo [setup] -->``."""
    pattern = re.compile(r"<!-- example: demo( setup)? -->\n```[a-z]*\n(.*?)\n```", re.S)
    return [("setup" if m.group(1) else "demo", m.group(2)) for m in pattern.finditer(text)]


def _private_checkout():
    """A copy of the demo's parts of the checkout in a folder only root can enter."""
    stamp = hashlib.sha256(b"".join(open(os.path.join(REPO, name), "rb").read()
                                    for name in ("setup.cfg", "pyproject.toml"))).hexdigest()[:16]
    # scripts/venv would otherwise reinstall the project's .venv from the copy.
    assert os.path.exists(os.path.join(REPO, ".venv", f".installed-{stamp}")), \
        "the project's .venv is older than setup.cfg: run scripts/venv first"
    home = tempfile.mkdtemp(prefix="hpcportal-root-home-")  # mode 0700, like /root
    checkout = os.path.join(home, "hpcportal")
    for part in CHECKOUT_PARTS:
        source, target = os.path.join(REPO, part), os.path.join(checkout, part)
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(source, target)
    os.symlink(os.path.join(REPO, ".venv"), os.path.join(checkout, ".venv"))
    return home, checkout


class Demo:
    def __init__(self, proc, folder, port, checkout, log_path):
        self.proc, self.folder, self.port, self.checkout = proc, folder, port, checkout
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.lines = []
        self.banner_done = threading.Event()
        self.catalogs_at_banner = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("hpcportal demo on ") and self.catalogs_at_banner is None:
                # What the printed curl lines answer the moment they are printed.
                self.catalogs_at_banner = (self.total("/api/v2/apptainer/images"),
                                           self.total("/api/v2/templates"))
            self.lines.append(line)
            if line.startswith("Stop with Ctrl-C."):
                self.banner_done.set()

    def env(self):
        values = {}
        with open(os.path.join(self.folder, "env")) as handle:
            for line in handle:
                if line.startswith("export ") and "$" not in line:
                    name, value = line[len("export "):].strip().split("=", 1)
                    values[name] = value
        return values

    def token(self):
        return self.env()["TOKEN"]

    def get(self, path, **kwargs):
        return requests.get(self.url + path, headers={"Authorization": f"Bearer {self.token()}"},
                            timeout=30, **kwargs)

    def total(self, path):
        try:
            return self.get(path).json().get("total")
        except (requests.RequestException, ValueError):
            return None

    def logs(self):
        with open(self.log_path, errors="replace") as handle:
            return "".join(self.lines) + handle.read()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C in the demo's terminal
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def demo(users, slurm_conf):
    home, checkout = _private_checkout()
    os.makedirs(SharedTree.BASE, mode=0o755, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="demo-", dir=SharedTree.BASE)
    os.chmod(folder, 0o755)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCPORTAL_")}
    env.update(PORTAL_DEMO_DIR=folder, PORTAL_DEMO_PORT=str(port), PORTAL_DEMO_USER=DEMO_USER)
    log_path = os.path.join(home, "demo.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([os.path.join(checkout, "scripts", "demo")], stdout=subprocess.PIPE,
                                stderr=log, text=True, env=env, cwd="/", start_new_session=True)
    running = Demo(proc, folder, port, checkout, log_path)
    try:
        if not running.banner_done.wait(600):
            raise AssertionError(f"the demo printed no token within 600 s:\n{running.logs()[-5000:]}")
        yield running
    finally:
        running.stop()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_checkout_is_out_of_the_demo_users_reach(demo, users):
    # The premise of the tests below: as in root's home, alice cannot enter the checkout.
    answer = subprocess.run(["runuser", "-u", DEMO_USER, "--", "test", "-x",
                             os.path.join(demo.checkout, "examples", "demo-apptainer")])
    assert answer.returncode != 0


def test_the_token_is_printed_once_the_catalogs_list_the_examples(demo):
    templates = len([n for n in os.listdir(os.path.join(REPO, "examples", "templates", "official"))
                     if n.endswith(".yaml")])
    assert demo.catalogs_at_banner == (3, templates), "".join(demo.lines)
    banner = "".join(demo.lines)
    assert f"export API={demo.url} TOKEN={demo.token()}" in banner
    assert f". {demo.folder}/env" in banner


def test_the_demo_reaches_slurm_through_slurmrestd(demo):
    # scripts/dev-slurm runs slurmrestd, the daemon's main path: the demo is configured for it.
    slurm = demo.get("/readyz").json()["checks"]["slurm"]
    assert slurm["ok"] and slurm["backend"] == "rest", slurm


def test_what_jobs_run_is_where_every_user_reaches_it(demo):
    with open(os.path.join(demo.folder, "state", "config.yaml")) as handle:
        apptainer = yaml.safe_load(handle)["slurm"]["apptainer"]
    assert not apptainer.startswith(demo.checkout + os.sep)
    path = apptainer
    while path != "/":
        assert os.stat(path).st_mode & stat.S_IXOTH, f"{path} is not open to every user"
        path = os.path.dirname(path)
    assert subprocess.run(["runuser", "-u", DEMO_USER, "--", "test", "-x", apptainer]).returncode == 0


def test_the_guides_examples_run_as_written_and_the_template_job_completes(demo, tmp_path):
    # README.md, then docs/*.md by name: a guide's examples may use what an earlier one set.
    blocks = [block for _, text in guides() for block in example_blocks(text)]
    kinds = [kind for kind, _ in blocks]
    assert kinds.count("setup") >= 2 and kinds.count("demo") >= 8, kinds
    ordered = [code for kind, code in blocks if kind == "setup"] + \
              [code for kind, code in blocks if kind == "demo"]
    script = ["set -e -o pipefail"]
    for number, code in enumerate(ordered):
        code = code.replace(README_DEMO_DIR, demo.folder).replace(README_API, demo.url)
        script += [f"echo '=== block {number}'", code]
    script.append('echo "=== JOB=$JOB SLEEPER=$SLEEPER"')
    os.chmod(tmp_path, 0o755)
    answer = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600,
                            env={k: v for k, v in os.environ.items() if not k.startswith("HPCPORTAL_")})
    out = answer.stdout
    assert answer.returncode == 0, f"{out}\n{answer.stderr}"
    assert '"success": false' not in out.replace('":false', '": false'), out
    assert '"success": true' in out  # the render and the submits answered
    ids = dict(pair.split("=", 1) for pair in out.rsplit("=== ", 1)[1].split())
    assert ids["JOB"].isdigit() and ids["SLEEPER"].isdigit(), out

    def ended():
        # alice's jobs of other tests on the shared cluster are listed too (source: cluster).
        jobs = [job for job in demo.get("/api/slurm/jobs", params={"limit": 1000}).json()["jobs"]
                if job.get("source") == "portal"]
        return jobs if all(job["state"] in FINAL for job in jobs) else None

    # The dashboard's job asks for the node's 64 CPUs: it waits for other jobs on a shared node.
    jobs = {job["jobId"]: job for job in wait_for(ended, timeout=900, message="the examples' jobs to end")}
    assert len(jobs) == 4, jobs  # the dashboard's, the one without image, the template's, the sleeper
    sleeper = jobs.pop(ids["SLEEPER"])
    assert sleeper["state"] == "CANCELLED"
    assert {job["state"] for job in jobs.values()} == {"COMPLETED"}, jobs
    template_job = demo.get(f"/api/slurm/jobs/{ids['JOB']}").json()
    assert template_job["template"]["id"] == "official.python-script"
    assert template_job["image"]["id"] == "python_3.11"
    output = demo.get(f"/api/slurm/jobs/{ids['JOB']}/output", params={"stream": "stdout"}).json()
    assert output["data"] == "hello from the template, arguments: ['--epochs', '3']\n"
    # The results block downloaded the job's result.
    assert (tmp_path / "part").read_text() == "epoch,loss\n1,0.25\n"


def test_a_demo_folder_its_user_cannot_reach_is_refused_up_front(demo):
    """Jobs would fail with `Permission denied` one by one: the demo says why at once."""
    folder = os.path.join(os.path.dirname(demo.checkout), "demo")  # in the 0700 "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCPORTAL_")}
    env.update(PORTAL_DEMO_DIR=folder, PORTAL_DEMO_PORT=str(free_port()), PORTAL_DEMO_USER=DEMO_USER)
    answer = subprocess.run([os.path.join(demo.checkout, "scripts", "demo")], capture_output=True,
                            text=True, env=env, cwd="/", timeout=600)
    assert answer.returncode == 2, answer.stdout + answer.stderr
    assert f"the user '{DEMO_USER}' cannot reach {folder}/shared/bin/demo-apptainer" in answer.stderr
    assert "PORTAL_DEMO_DIR" in answer.stderr
    assert "starting hpcportald" not in answer.stdout


def test_ctrl_c_stops_the_demo_and_its_daemon(demo):
    assert demo.stop() == 0, demo.logs()[-3000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(demo.url + "/healthz", timeout=5)
