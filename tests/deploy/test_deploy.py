"""The Ansible role on real head nodes: two Debian 12 hosts booted with
systemd-nspawn (``tests/deploy/lab.sh``), sharing one ``/shared``.

The tests run in file order against the same two heads: converge, converge
again (nothing changes), then inspect, restart, reboot, reconfigure and upgrade.
Needs root (namespaces, nspawn). ``scripts/deploy-test-deps`` installs what the
machine lacks; the heads' base image is built once and cached under ``$LAB``.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import uuid

import pytest
import yaml
from support.sifbuild import build_sif
from support.slurm import APPTAINER_STANDIN
from support.waiting import wait_for

pytestmark = pytest.mark.deploy

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ANSIBLE_DIR = ROOT / "ansible"
UNIT_FILE = ROOT / "systemd" / "hpcportald.service"
RESTD_UNIT_FILE = ROOT / "systemd" / "slurmrestd.service"
LAB = pathlib.Path(os.environ.get("HPCPORTAL_LAB", "/var/tmp/hpcportal-lab"))
NETNS = "hpl-ctl"
HEADS = {"head1": "10.211.0.11", "head2": "10.211.0.12"}
PORT = 5000
SECRET = "lab-secret-identical-on-every-head-0123456789"  # = tests/deploy/lab-vars.yml
WHEELHOUSE = LAB / "shared" / "hpcportal" / "wheelhouse"
# Both heads share one MariaDB (scripts/dev-db) on the controller's bridge address;
# the role creates the database and user through the admin socket.
CTL_ADDRESS = "10.211.0.1"
DB_DIR = LAB / "db"
DB_SOCKET = DB_DIR / "mariadb" / "mysqld.sock"
DB_PORT = 3316  # scripts/dev-db's default
DB_NAME = "hpcportal_lab"
DB_VARS = {
    "hpcportal_database_create": True,
    "hpcportal_database_host": CTL_ADDRESS,
    "hpcportal_database_port": DB_PORT,
    "hpcportal_database_name": DB_NAME,
    "hpcportal_database_user": "portal_lab",
    "hpcportal_database_password": "lab-db-password",
    "hpcportal_database_admin_socket": str(DB_SOCKET),
    "hpcportal_pip_extra_packages": ["PyMySQL"],
}
# The driver the heads need for the shared database, added to the wheelhouse.
DB_DRIVER = "PyMySQL>=1.1"
# The lab's own Slurm cluster, set up by the test as a site's installer would (the
# role never touches slurm.conf): slurmctld and slurmd on head1, JWTs accepted, the
# same munge key (from the base) and JWT key on both heads.
SLURM_CONF = "/etc/slurm/slurm.conf"
NO_JWT_CONF = "/etc/slurm/lab-without-jwt.conf"
JWT_KEY = "/etc/slurm/jwt_hs256.key"
RESTD_SOCKET = "/run/slurmrestd/slurmrestd.socket"
LAB_SLURM_CONF = f"""\
ClusterName=lab
SlurmctldHost=head1({HEADS['head1']})
SlurmUser=root
AuthType=auth/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key={JWT_KEY}
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=3600
EnforcePartLimits=ALL
NodeName=head1 NodeAddr={HEADS['head1']} CPUs=4 RealMemory=1000 State=UNKNOWN
PartitionName=compute Nodes=head1 Default=YES MaxTime=INFINITE State=UP
"""
# Generous bound for asynchronous effects (a head booting, a file being indexed).
WAIT_SECONDS = 60


def run(cmd, check=True, **kwargs):
    result = subprocess.run(cmd, text=True, capture_output=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def in_ctl(*cmd, **kwargs):
    """Run a command in the controller's network namespace (the only way to the heads)."""
    return run(["ip", "netns", "exec", NETNS, *cmd], **kwargs)


def ssh_args():
    return ["ssh", "-i", str(LAB / "id_ed25519"), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]


def on_head(head, command, check=True):
    return in_ctl(*ssh_args(), f"root@{HEADS[head]}", command, check=check)


def curl(url, *args):
    """(status, body) of an HTTP request from the controller namespace."""
    result = in_ctl("curl", "-s", "-m", "10", "-o", "/dev/stdout", "-w", "\n%{http_code}",
                    *args, url, check=False)
    body, _, status = result.stdout.rpartition("\n")
    return int(status or 0), body


def wait_on_heads(predicate, what):
    """``wait_for`` with the lab's bound: heads are containers on a busy machine."""
    return wait_for(predicate, timeout=WAIT_SECONDS, interval=0.5, message=what)


def healthy(head):
    return curl(f"http://{HEADS[head]}:{PORT}/healthz")[0] == 200


def starts_of_daemon(head):
    """How often systemd has started hpcportald on ``head`` since it booted."""
    out = on_head(head, "journalctl -b -u hpcportald.service -o cat --no-pager").stdout
    return len(re.findall(r"^Started hpcportald\.service", out, re.M))


def start_lab_cluster():
    """slurm.conf and the JWT key on both heads, slurmctld and slurmd on head1."""
    key = os.urandom(32).hex()
    without_jwt = "".join(line + "\n" for line in LAB_SLURM_CONF.splitlines()
                          if not line.startswith("AuthAlt"))
    for head in HEADS:
        on_head(head, f"mkdir -p /etc/slurm && cat > {SLURM_CONF} <<'EOF'\n{LAB_SLURM_CONF}EOF\n"
                      f"cat > {NO_JWT_CONF} <<'EOF'\n{without_jwt}EOF\n"
                      f"(umask 077 && python3 -c 'import sys; open(sys.argv[1], \"wb\")"
                      f".write(bytes.fromhex(sys.argv[2]))' {JWT_KEY} {key})\n"
                      "id deploytest >/dev/null 2>&1 || useradd -u 2101 -M deploytest")
    on_head("head2", "systemctl disable --now slurmctld slurmd")
    on_head("head1", "systemctl enable slurmctld slurmd && systemctl restart slurmctld slurmd")
    wait_on_heads(lambda: "idle" in on_head("head1", "sinfo -h -o %t", check=False).stdout,
                  "the lab's Slurm node idle")


def admin_readyz(head):
    """/readyz with an admin token: every check with its detail."""
    token = on_head(head, "/opt/hpcportal/venv/bin/hpcportald --config /etc/hpcportal/config.yaml "
                          "token --user deploytest --admin").stdout.strip()
    status, body = curl(f"http://{HEADS[head]}:{PORT}/readyz", "-H", f"Authorization: Bearer {token}")
    return status, json.loads(body)


def slurm_backend(ready):
    """The Slurm backend a /readyz answer (with details) names."""
    check = ready["checks"]["slurm"]
    if "backend" in check:
        return check["backend"]
    return re.match(r"\w+", check["detail"]).group(0)  # "rest: slurmrestd answers ..."


def user_token(user):
    return on_head("head1", "/opt/hpcportal/venv/bin/hpcportald --config /etc/hpcportal/config.yaml "
                            f"token --user {user}").stdout.strip()


def main_pid(head):
    return on_head(head, "systemctl show -p MainPID --value hpcportald").stdout.strip()


@pytest.fixture(scope="session")
def deploy_venv():
    if os.geteuid() != 0:
        pytest.skip("the deployment lab needs root (network namespaces, systemd-nspawn)")
    out = run(["bash", str(ROOT / "scripts" / "deploy-test-deps")]).stdout
    return pathlib.Path(out.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def lab_lock():
    """One lab per machine: a second test session waits instead of tearing this one down."""
    LAB.mkdir(parents=True, exist_ok=True)
    with open(LAB / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_wheelhouse(venv, target, version=None):
    """hpcportal's wheel (at ``version`` if given) + its dependencies, into ``target``.

    Built from a copy of the sources (other work may be building in the checkout);
    dependency wheels are cached per requirement set, only hpcportal is rebuilt.
    """
    setup_cfg = (ROOT / "setup.cfg").read_text()
    requires = re.search(r"install_requires\s*=\s*\n((?:[ \t]+.*\n)+)", setup_cfg).group(1)
    cache = LAB / "wheel-cache" / hashlib.sha256((requires + DB_DRIVER).encode()).hexdigest()[:16]
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q",
           "wheel", "--no-build-isolation"]
    with _temporary_dir() as source, _temporary_dir() as build:
        for name in ("setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in"):
            if (ROOT / name).exists():
                shutil.copy2(ROOT / name, source / name)
        shutil.copytree(ROOT / "daemon", source / "daemon",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        if version:
            init = source / "daemon" / "hpcportal" / "__init__.py"
            init.write_text(re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"',
                                   init.read_text()))
        if not (cache / ".ready").exists():
            shutil.rmtree(cache, ignore_errors=True)
            run([*pip, "-w", str(cache), str(source), DB_DRIVER])
            for wheel in cache.glob("hpcportal-*.whl"):
                wheel.unlink()
            (cache / ".ready").touch()
        run([*pip, "--no-deps", "-w", str(build), str(source)])
        target.mkdir(parents=True, exist_ok=True)
        for wheel in [*cache.glob("*.whl"), *build.glob("*.whl")]:
            shutil.copy2(wheel, target)


@contextlib.contextmanager
def _temporary_dir():
    path = pathlib.Path(LAB / f"tmp-{uuid.uuid4().hex[:8]}")
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def daemon_version():
    init = (ROOT / "daemon" / "hpcportal" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', init).group(1)


def db_sql(sql):
    """Run SQL as the shared MariaDB's admin (root by socket): its tab-separated output."""
    return run(["mariadb", "--no-defaults", f"--socket={DB_SOCKET}", "-uroot", "-N", "-B",
                "-e", sql]).stdout.strip()


def dev_db(action, env):
    return in_ctl("env", f"DEV_DB_BIND={CTL_ADDRESS}", f"DEV_DB_DIR={DB_DIR}",
                  "bash", str(ROOT / "scripts" / "dev-db"), action, "mariadb", env=env,
                  check=action == "start")


@pytest.fixture(scope="session")
def lab(deploy_venv, lab_lock, tmp_path_factory):
    env = dict(os.environ, LAB=str(LAB))
    up = run(["bash", str(HERE / "lab.sh"), "up"], env=env, check=False)
    assert up.returncode == 0, up.stderr
    # A server left over from an interrupted run, then a fresh one (the role creates the database).
    dev_db("stop", env)
    shutil.rmtree(DB_DIR, ignore_errors=True)
    dev_db("start", env)
    start_lab_cluster()
    # The jobs run a test stand-in for apptainer (no container runtime on the heads).
    standin = LAB / "shared" / "bin" / "apptainer"
    standin.parent.mkdir(parents=True, exist_ok=True)
    standin.write_text(APPTAINER_STANDIN)
    standin.chmod(0o755)
    control_dir = tmp_path_factory.mktemp("ssh-control")
    inventory = tmp_path_factory.mktemp("inventory")
    shutil.copy2(LAB / "inventory.ini", inventory / "hosts.ini")
    (inventory / "group_vars").mkdir()
    group_vars = yaml.safe_load((HERE / "lab-vars.yml").read_text())
    (inventory / "group_vars" / "heads.yml").write_text(yaml.safe_dump({**group_vars, **DB_VARS}))
    env.update(
        PATH=f"{deploy_venv / 'bin'}:{env['PATH']}",
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_INVENTORY=str(inventory / "hosts.ini"),
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(control_dir),
        # Throw-away heads get new host keys at every run.
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=60s "
                         "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        ANSIBLE_NOCOLOR="1",
        # Facts (OS family, service manager) are gathered once per session.
        ANSIBLE_CACHE_PLUGIN="ansible.builtin.jsonfile",
        ANSIBLE_CACHE_PLUGIN_CONNECTION=str(tmp_path_factory.mktemp("facts")),
    )
    try:
        build_wheelhouse(deploy_venv, WHEELHOUSE)
        # "extra": variables later playbook runs keep passing (a reconfiguration that stays).
        yield {"env": env, "venv": deploy_venv, "inventory": inventory, "extra": {}}
    finally:
        for sock in control_dir.iterdir():
            run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "head"], check=False)
        dev_db("stop", env)  # inside the controller namespace, before lab.sh removes it
        run(["bash", str(HERE / "lab.sh"), "down"], env=env, check=False)


def playbook(lab, *args):
    """Run site.yml against both heads: (result, {head: {"ok": n, "changed": n, ...}})."""
    extra = ["-e", json.dumps(lab["extra"])] if lab["extra"] else []
    result = in_ctl(str(lab["venv"] / "bin" / "ansible-playbook"), str(ANSIBLE_DIR / "site.yml"),
                    *extra, *args, env=lab["env"], check=False)
    recap = {host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", rest)}
             for host, rest in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", result.stdout, re.M)}
    return result, recap


def show(result):
    return f"rc={result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"


@pytest.fixture(scope="session")
def converged(lab):
    result, recap = playbook(lab)
    assert result.returncode == 0, show(result)
    return recap


# --- without heads ---------------------------------------------------------------

def test_unit_file_verifies_except_for_the_absent_binary():
    """Off a head, the only complaint may be that ExecStart's binary is not installed."""
    result = run(["systemd-analyze", "verify", "--man=no", str(UNIT_FILE)], check=False)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) <= 1, lines
    assert all("/opt/hpcportal/venv/bin/hpcportald is not executable" in line for line in lines)


def test_role_passes_ansible_lint_offline(deploy_venv):
    env = dict(os.environ, PATH=f"{deploy_venv / 'bin'}:{os.environ['PATH']}")
    result = run([str(deploy_venv / "bin" / "ansible-lint"), "--offline", "--nocolor"],
                 cwd=ANSIBLE_DIR, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_role_variable_is_specified_and_documented():
    role = ANSIBLE_DIR / "roles" / "hpcportal"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert all(name.startswith("hpcportal_") for name in defaults)
    assert set(options) == set(defaults)
    assert all(options[name].get("description") for name in options)
    guide = (ROOT / "docs" / "deployment.md").read_text()
    assert [name for name in defaults if f"`{name}`" not in guide] == []



def test_lab_base_holds_every_package_the_role_installs():
    """The heads reach no mirror: a package missing from the base fails the apt task."""
    script = (HERE / "lab.sh").read_text()
    packages = set()
    for name in ("BOOT_PKGS", "ROLE_PKGS"):
        value = re.search(rf"^{name}=(?:\$\{{{name}:-)?([\w.,+-]+)", script, re.M).group(1)
        packages |= set(value.split(","))
    defaults = yaml.safe_load((ANSIBLE_DIR / "roles" / "hpcportal" / "defaults" / "main.yml").read_text())
    assert set(defaults["hpcportal_apt_packages"]) <= packages
    assert set(defaults["hpcportal_slurmrestd_apt_packages"]) <= packages

# --- on two heads ----------------------------------------------------------------

def test_converge_succeeds_on_both_heads(converged):
    assert set(converged) == set(HEADS)
    assert all(counts["failed"] == 0 and counts["unreachable"] == 0 for counts in converged.values())


def test_second_run_changes_nothing(lab, converged):
    result, recap = playbook(lab)
    assert result.returncode == 0, show(result)
    assert set(recap) == set(HEADS)
    assert {head: counts["changed"] for head, counts in recap.items()} == {h: 0 for h in HEADS}, show(result)


@pytest.mark.parametrize("head", HEADS)
def test_daemon_runs_under_systemd_with_the_repository_unit(converged, head):
    assert on_head(head, "systemctl is-active hpcportald").stdout.strip() == "active"
    assert on_head(head, "systemctl is-enabled hpcportald").stdout.strip() == "enabled"
    installed = on_head(head, "cat /etc/systemd/system/hpcportald.service").stdout
    # The lab uses the role's default paths, so the unit is exactly the repository's.
    assert installed == UNIT_FILE.read_text()
    verify = on_head(head, "systemd-analyze verify --man=no /etc/systemd/system/hpcportald.service 2>&1",
                     check=False)
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout
    props = on_head(head, "systemctl show hpcportald -p Type -p ProtectSystem -p NoNewPrivileges "
                          "-p ReadWritePaths -p CapabilityBoundingSet -p PrivateTmp").stdout
    assert "Type=notify" in props
    assert "ProtectSystem=strict" in props
    assert "NoNewPrivileges=yes" in props
    assert "ReadWritePaths=/shared/uploads\n" in props
    assert "PrivateTmp=yes" in props
    caps = set(re.search(r"CapabilityBoundingSet=(.*)", props).group(1).split())
    assert caps == {"cap_chown", "cap_dac_override", "cap_dac_read_search", "cap_fowner",
                    "cap_kill", "cap_setgid", "cap_setuid"}


@pytest.mark.parametrize("head", HEADS)
def test_config_and_secret_files_are_private_and_secret_is_the_given_one(converged, head):
    stat = on_head(head, "stat -c '%n %U %G %a' /etc/hpcportal/config.yaml /etc/hpcportal/jwt-secret").stdout
    assert stat.split("\n")[:2] == ["/etc/hpcportal/config.yaml root root 640",
                                    "/etc/hpcportal/jwt-secret root root 600"]
    assert on_head(head, "cat /etc/hpcportal/jwt-secret").stdout.strip() == SECRET
    check = on_head(head, "/opt/hpcportal/venv/bin/hpcportald --config /etc/hpcportal/config.yaml check-config")
    assert "secret_file: /etc/hpcportal/jwt-secret" in check.stdout


@pytest.mark.parametrize("head", HEADS)
def test_healthz_answers_on_each_head_address(converged, head):
    assert curl(f"http://{HEADS[head]}:{PORT}/healthz") == (200, '{"status": "ok"}')


def test_role_created_the_shared_database_and_both_heads_use_it(converged):
    assert db_sql(f"show databases like '{DB_NAME}'") == DB_NAME
    assert db_sql("select concat(user, '@', host) from mysql.user where user = 'portal_lab'") == "portal_lab@%"
    # The daemon migrated the schema into it, and no head fell back to SQLite.
    assert db_sql(f"select count(*) from information_schema.tables where table_schema = '{DB_NAME}' "
                  "and table_name = 'audit_record'") == "1"
    for head in HEADS:
        config = yaml.safe_load(on_head(head, "cat /etc/hpcportal/config.yaml").stdout)
        assert config["database"]["url"] == f"mysql://portal_lab:lab-db-password@{CTL_ADDRESS}:{DB_PORT}/{DB_NAME}"
        assert on_head(head, "test -e /var/lib/hpcportal/portal.db", check=False).returncode != 0


def test_shared_folders_exist_once_with_owners_and_modes(converged):
    def mode(path):
        st = os.stat(LAB / "shared" / path)
        return st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)

    for path in ("apptainer/images", "apptainer/images/compute", "apptainer/images/viz",
                 "templates", "templates/official"):
        assert mode(path) == (0, 0, "0o755"), path
    assert mode("uploads") == (0, 0, "0o711")


def test_a_token_from_one_secret_is_accepted_by_both_heads(converged):
    token = on_head("head1", "/opt/hpcportal/venv/bin/hpcportald --config /etc/hpcportal/config.yaml "
                             "token --user root").stdout.strip()
    for head, address in HEADS.items():
        status, body = curl(f"http://{address}:{PORT}/api/v2/me", "-H", f"Authorization: Bearer {token}")
        # root is never a portal user: a valid signature gets past 401 to a refusal.
        assert status not in (0, 401, 422), (head, status, body)
        status, _ = curl(f"http://{address}:{PORT}/api/v2/me", "-H", "Authorization: Bearer not.a.token")
        assert status in (401, 422), head


def test_image_dropped_on_shared_shows_up_through_both_heads(converged):
    token = on_head("head1", "/opt/hpcportal/venv/bin/hpcportald --config /etc/hpcportal/config.yaml "
                             "token --user deploytest").stdout.strip()
    for head in HEADS:
        on_head(head, "id deploytest >/dev/null 2>&1 || useradd -u 2101 -M deploytest")
    url = "http://{}:%d/api/v2/apptainer/images" % PORT
    status, body = curl(url.format(HEADS["head1"]), "-H", f"Authorization: Bearer {token}")
    if status == 404:
        pytest.skip("this daemon build has no image catalog yet")
    assert status == 200, body
    name = f"deploy_{uuid.uuid4().hex[:8]}.sif"
    image = LAB / "shared" / "apptainer" / "images" / "compute" / name
    build_sif(image, labels={"org.label-schema.version": "1.0"})

    def listed(head):
        status, body = curl(url.format(HEADS[head]), "-H", f"Authorization: Bearer {token}")
        return status == 200 and name in body

    for head in HEADS:
        wait_on_heads(lambda head=head: listed(head), f"{name} listed by {head}")


def test_an_upload_moves_between_heads_chunk_by_chunk(converged, tmp_path):
    """Shared state for real: one upload's chunks go to alternating heads, and the
    file is complete, owned by its user, and readable through the other head."""
    token = on_head("head1", "/opt/hpcportal/venv/bin/hpcportald --config /etc/hpcportal/config.yaml "
                             "token --user deploytest").stdout.strip()
    for head in HEADS:
        on_head(head, "id deploytest >/dev/null 2>&1 || useradd -u 2101 -M deploytest")
    auth = ("-H", f"Authorization: Bearer {token}")
    url = "http://{}:%d/api/v2/files/upload/{}" % PORT
    mib = 1024 * 1024
    data = os.urandom(2 * mib + 12345)
    name = f"across-{uuid.uuid4().hex[:8]}.bin"
    status, body = curl(url.format(HEADS["head1"], "init"), *auth, "-X", "POST", "-H",
                        "Content-Type: application/json", "--data",
                        json.dumps({"filename": name, "size": len(data), "chunk_size": mib}))
    assert status == 201, body
    upload_id = json.loads(body)["upload_id"]
    for index, head in enumerate(("head1", "head2", "head1")):
        piece = tmp_path / f"chunk{index}"
        piece.write_bytes(data[index * mib:(index + 1) * mib])
        status, body = curl(url.format(HEADS[head], f"chunk?upload_id={upload_id}&chunk_index={index}"),
                            *auth, "-H", "Content-Type: application/octet-stream",
                            "--data-binary", f"@{piece}")
        assert status == 200, (head, body)
    status, body = curl(url.format(HEADS["head2"], "complete"), *auth, "-X", "POST", "-H",
                        "Content-Type: application/json", "--data", json.dumps({"upload_id": upload_id}))
    assert status == 200, body
    done = json.loads(body)
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    stored = LAB / "shared" / pathlib.Path(done["storage_path"]).relative_to("/shared")
    assert stored.read_bytes() == data and stored.stat().st_uid == 2101
    downloaded = tmp_path / "downloaded"
    status = in_ctl("curl", "-s", "-m", "30", "-o", str(downloaded), "-w", "%{http_code}", *auth,
                    f"http://{HEADS['head1']}:{PORT}/api/v2/files/{done['file_id']}/content",
                    check=False).stdout
    assert status == "200" and downloaded.read_bytes() == data


@pytest.mark.parametrize("head", HEADS)
def test_slurmrestd_runs_on_each_head_where_only_root_reaches_it(converged, head):
    assert on_head(head, "systemctl is-active slurmrestd").stdout.strip() == "active"
    installed = on_head(head, "cat /etc/systemd/system/slurmrestd.service").stdout
    # The role's defaults, so the unit is exactly the repository's.
    assert installed == RESTD_UNIT_FILE.read_text()
    verify = on_head(head, "systemd-analyze verify --man=no /etc/systemd/system/slurmrestd.service 2>&1",
                     check=False)
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout
    pid = on_head(head, "systemctl show -p MainPID --value slurmrestd").stdout.strip()
    assert on_head(head, f"ps -o user= -p {pid}").stdout.strip() == "slurmrest"
    assert on_head(head, "stat -c '%U %a' /run/slurmrestd").stdout.strip() == "slurmrest 700"
    connect = ("python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); "
               f"s.connect(\"{RESTD_SOCKET}\"); s.sendall(b\"GET /openapi/v3 HTTP/1.0\\r\\n\\r\\n\"); "
               "print(s.recv(100).decode().split()[1])'")
    # Without a token slurmrestd answers 401 to root; an ordinary user cannot even connect.
    assert on_head(head, connect).stdout.strip() == "401"
    refused = on_head(head, f"runuser -u deploytest -- {connect}", check=False)
    assert refused.returncode != 0 and "PermissionError" in refused.stderr, refused.stderr


@pytest.mark.parametrize("head", HEADS)
def test_daemon_on_each_head_talks_to_slurm_through_slurmrestd(converged, head):
    config = yaml.safe_load(on_head(head, "cat /etc/hpcportal/config.yaml").stdout)
    assert {k: config["slurm"][k] for k in ("backend", "rest_url", "jwt_key_file")} == {
        "backend": "auto", "rest_url": f"unix:{RESTD_SOCKET}", "jwt_key_file": JWT_KEY}
    status, ready = admin_readyz(head)
    assert status == 200, ready
    assert slurm_backend(ready) == "rest", ready


def submit_job(head, token, text):
    """A job through ``head``'s API, running the lab's image; its Slurm job id."""
    name = f"job_{uuid.uuid4().hex[:8]}"
    image = LAB / "shared" / "apptainer" / "images" / "compute" / f"{name}.sif"
    if not image.exists():
        build_sif(image, labels={"org.label-schema.version": "1.0"})
    auth = ("-H", f"Authorization: Bearer {token}")
    wait_on_heads(lambda: curl(f"http://{HEADS[head]}:{PORT}/api/v2/apptainer/images/{name}", *auth)[0] == 200,
                  f"{name} in {head}'s catalog")
    body = {"jobName": name, "partition": "compute", "nodes": 1, "cpus": 1, "memory": "100MB",
            "time": "00:05:00", "script": f"#!/bin/bash\necho {text}", "jobId": f"tmp-{name}",
            "files": [], "apptainerImage": {"id": name, "name": f"{name}.sif", "type": "compute",
                                            "path": f"/shared/apptainer/images/compute/{name}.sif"}}
    status, answer = curl(f"http://{HEADS[head]}:{PORT}/api/slurm/jobs/submit", *auth, "-X", "POST",
                          "-H", "Content-Type: application/json", "--data", json.dumps(body))
    assert status == 200, answer
    return json.loads(answer)["jobId"]


def finished_job(head, token, job_id):
    def state():
        status, body = curl(f"http://{HEADS[head]}:{PORT}/api/slurm/jobs/{job_id}",
                            "-H", f"Authorization: Bearer {token}")
        job = json.loads(body) if status == 200 else {}
        return job if job.get("state") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") else None
    return wait_on_heads(state, f"job {job_id} finished, seen through {head}")


def job_output(head, token, job_id):
    status, body = curl(f"http://{HEADS[head]}:{PORT}/api/slurm/jobs/{job_id}/output?stream=stdout",
                        "-H", f"Authorization: Bearer {token}")
    assert status == 200, body
    return json.loads(body)["data"]


def test_a_job_submitted_through_one_head_runs_and_shows_on_both(converged):
    token = user_token("deploytest")
    job_id = submit_job("head2", token, "hello from head2")
    for head in HEADS:
        job = finished_job(head, token, job_id)
        assert job["state"] == "COMPLETED" and job["user"] == "deploytest", job
    text = job_output("head1", token, job_id)
    assert "hello from head2" in text and "APPTAINER-TEST-STANDIN" in text, text


def test_daemon_comes_back_after_systemctl_restart(converged):
    before = main_pid("head1")
    on_head("head1", "systemctl restart hpcportald")
    assert on_head("head1", "systemctl is-active hpcportald").stdout.strip() == "active"
    assert main_pid("head1") != before
    wait_on_heads(lambda: healthy("head1"), "head1 healthy after restart")


def test_systemd_restarts_a_crashed_daemon(converged):
    before = main_pid("head1")
    on_head("head1", f"kill -KILL {before}")
    wait_on_heads(lambda: main_pid("head1") not in ("0", before), "a new hpcportald on head1")
    wait_on_heads(lambda: healthy("head1"), "head1 healthy after the crash")


def test_daemon_comes_back_after_head_reboot(lab, converged):
    run(["bash", str(HERE / "lab.sh"), "restart", "head2"], env=lab["env"])
    wait_on_heads(lambda: healthy("head2"), "head2 healthy after reboot")
    assert on_head("head2", "systemctl is-active hpcportald").stdout.strip() == "active"
    # slurmrestd comes back too, and the daemon uses it again.
    assert on_head("head2", "systemctl is-active slurmrestd").stdout.strip() == "active"
    wait_on_heads(lambda: slurm_backend(admin_readyz("head2")[1]) == "rest", "head2 on slurmrestd after reboot")


def test_config_change_restarts_the_daemon_exactly_once(lab, converged):
    before = {head: starts_of_daemon(head) for head in HEADS}
    # Both the config file (threads) and the unit (an extra writable path) change,
    # and the nginx snippet appears (not the daemon's business: no extra restart).
    # The later tests keep this configuration.
    lab["extra"] = {"hpcportal_threads": 12, "hpcportal_extra_read_write_paths": ["/var/tmp"],
                    "hpcportal_nginx_proxy": True}
    result, recap = playbook(lab)
    assert result.returncode == 0, show(result)
    assert all(counts["changed"] >= 3 for counts in recap.values()), show(result)
    assert {head: starts_of_daemon(head) for head in HEADS} == {h: n + 1 for h, n in before.items()}
    for head in HEADS:
        assert "threads: 12" in on_head(head, "cat /etc/hpcportal/config.yaml").stdout
        props = on_head(head, "systemctl show -p ReadWritePaths hpcportald").stdout
        assert props.strip() == "ReadWritePaths=/shared/uploads /var/tmp"
        assert healthy(head)


def test_upgrade_to_a_newer_wheel_keeps_the_database(lab, converged):
    marker = f"/api/deploy-marker-{uuid.uuid4().hex[:12]}"
    for address in HEADS.values():
        # Every state-changing /api/ call is audited, even an unauthenticated one.
        assert curl(f"http://{address}:{PORT}{marker}", "-X", "POST")[0] == 401
    count_marker = f"select count(*) from {DB_NAME}.audit_record where target = '{marker}'"
    # One shared database: each head's call is recorded in it (written behind the answer).
    wait_on_heads(lambda: db_sql(count_marker) == "2", "both heads' audit records in the shared database")
    newer = f"{daemon_version()}.post1"
    build_wheelhouse(lab["venv"], WHEELHOUSE, version=newer)
    before = {head: starts_of_daemon(head) for head in HEADS}

    result, recap = playbook(lab)
    assert result.returncode == 0, show(result)
    for head in HEADS:
        version = on_head(head, "/opt/hpcportal/venv/bin/hpcportald --version").stdout.strip()
        assert version == f"hpcportald {newer}"
        assert starts_of_daemon(head) == before[head] + 1
        assert healthy(head)
    assert db_sql(count_marker) == "2"


def test_preflight_refuses_a_missing_secret(lab, converged):
    result, _ = playbook(lab, "--tags", "preflight", "-e", "hpcportal_jwt_secret=''")
    assert result.returncode != 0
    assert "Set hpcportal_jwt_secret" in result.stdout


def test_preflight_refuses_different_secrets_per_head(lab, converged):
    host_vars = lab["inventory"] / "host_vars"
    host_vars.mkdir(exist_ok=True)
    (host_vars / "head2.yml").write_text("hpcportal_jwt_secret: another-secret-on-head2\n")
    try:
        result, _ = playbook(lab, "--tags", "preflight")
    finally:
        shutil.rmtree(host_vars)
    assert result.returncode != 0
    assert "differ between heads" in result.stdout


def test_preflight_refuses_backend_rest_without_jwt_in_the_cluster(lab, converged):
    result, _ = playbook(lab, "--tags", "preflight", "-e", "hpcportal_slurm_backend=rest",
                         "-e", f"hpcportal_slurm_conf={NO_JWT_CONF}")
    assert result.returncode != 0
    assert "hpcportal_slurm_backend is rest, but the cluster lacks AuthAltTypes=auth/jwt" in result.stdout
    assert f"read from {NO_JWT_CONF}" in result.stdout and "never edits slurm.conf" in result.stdout
    # The key path is the role's variable: a head without that key is refused too.
    result, _ = playbook(lab, "--tags", "preflight", "-e", "hpcportal_slurm_backend=rest",
                         "-e", "hpcportal_slurm_jwt_key_file=/etc/slurm/elsewhere.key")
    assert result.returncode != 0
    assert "the JWT key /etc/slurm/elsewhere.key is not on this head" in result.stdout
    # The role only read slurm.conf.
    for head in HEADS:
        assert "AuthAltTypes=auth/jwt" in on_head(head, f"cat {SLURM_CONF}").stdout


def test_nginx_snippet_proxies_the_api(lab, converged):
    """The snippet (written by the config-change run), inside a dashboard-like server block."""
    if not lab["extra"].get("hpcportal_nginx_proxy"):
        lab["extra"]["hpcportal_nginx_proxy"] = True
        result, _ = playbook(lab, "--tags", "configure")
        assert result.returncode == 0, show(result)
    snippet = on_head("head1", "cat /etc/nginx/snippets/hpcportal.conf").stdout
    assert "proxy_request_buffering off;" in snippet
    assert "client_max_body_size 80m;" in snippet
    site = "server { listen 8080; include snippets/hpcportal.conf; }"
    on_head("head1", f"echo '{site}' > /etc/nginx/sites-enabled/portal && nginx -t -q && "
                     "systemctl reload-or-restart nginx")
    status, body = wait_on_heads(lambda: (lambda r: r if r[0] else None)(
        curl(f"http://{HEADS['head1']}:8080/api/v2/me")), "nginx on head1")
    assert status == 401 and json.loads(body)["msg"] == "Missing Authorization Header", body


def test_auto_falls_back_to_the_commands_and_says_so(lab, converged):
    """A cluster without JWTs: head2 is configured for the commands, and still runs jobs.
    The last test: head2 stays that way (a full run with the lab's slurm.conf undoes it)."""
    result, _ = playbook(lab, "--limit", "head2", "--tags", "configure,service",
                         "-e", f"hpcportal_slurm_conf={NO_JWT_CONF}")
    assert result.returncode == 0, show(result)
    assert ("WARNING: hpcportal_slurm_backend is auto and the cluster lacks AuthAltTypes=auth/jwt"
            in result.stdout), show(result)
    config = yaml.safe_load(on_head("head2", "cat /etc/hpcportal/config.yaml").stdout)
    assert config["slurm"]["backend"] == "cli" and "rest_url" not in config["slurm"]
    wait_on_heads(lambda: healthy("head2"), "head2 healthy with the commands")
    status, ready = admin_readyz("head2")
    assert status == 200 and slurm_backend(ready) == "cli", ready
    token = user_token("deploytest")
    job_id = submit_job("head2", token, "hello through sbatch")
    assert finished_job("head2", token, job_id)["state"] == "COMPLETED"
