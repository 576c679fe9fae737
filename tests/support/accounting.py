"""Slurm clusters with and without accounting for the usage tests.

``accounting_slurm_conf`` (session fixture): a cluster with slurmdbd and
jobacct_gather/linux; ``plain_slurm_conf``: one without accounting. Each is the
shared cluster when it is of that kind (CI starts it fresh with
``scripts/dev-slurm``, which sets accounting up; a cluster started by an older
script has none); otherwise a second cluster beside it, started with
``scripts/dev-slurm`` in a folder of its own, on its own ports, without touching
/etc/slurm, and stopped at the end of the session. ``slurmdb_rest``: a cluster with
accounting whose slurmrestd serves ``/slurmdb/``, and ``plain_rest`` the slurmrestd
of the cluster without accounting (no ``/slurmdb/``), as ``(slurm.conf, URL, key)``.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile

import pytest

from support.backends import dev_slurm_environment
from support.daemon import free_port
from support.slurm import REPO

# slurm.conf of a cluster -> (slurmrestd URL, JWT key file), from dev-slurm's exports.
_REST = {}


def _exports(text):
    return dict(word.split("=", 1) for line in text.splitlines() if line.startswith("export ")
                for word in line.split()[1:] if "=" in word)


def keeps_accounting(conf):
    with open(conf) as handle:
        return "AccountingStorageType=accounting_storage/slurmdbd" in handle.read()


@contextlib.contextmanager
def second_cluster(accounting):
    base = tempfile.mkdtemp(prefix="hpcportal-second-slurm-")
    os.chmod(base, 0o755)
    env = {**os.environ, "DEV_SLURM_DIR": base, "DEV_SLURM_LINK_ETC": "0",
           "DEV_SLURM_ACCOUNTING": "1" if accounting else "0",
           "DEV_SLURM_CTLD_PORT": str(free_port()), "DEV_SLURM_SLURMD_PORT": str(free_port()),
           "DEV_SLURM_REST_PORT": str(free_port()), "DEV_SLURM_DBD_PORT": str(free_port())}
    env.pop("SLURM_CONF", None)
    script = os.path.join(REPO, "scripts", "dev-slurm")
    answer = subprocess.run([script, "start"], capture_output=True, text=True, env=env, timeout=600)
    try:
        if answer.returncode != 0:
            raise RuntimeError(f"dev-slurm start (a second cluster) failed:\n{answer.stderr[-3000:]}")
        conf = os.path.join(base, "etc", "slurm.conf")
        assert keeps_accounting(conf) == accounting
        found = _exports(answer.stdout)
        if found.get("SLURM_REST_URL"):
            _REST[conf] = (found["SLURM_REST_URL"], found["SLURM_JWT_KEY_FILE"])
        yield conf
    finally:
        subprocess.run([script, "stop"], capture_output=True, text=True, env=env, timeout=300)
        if accounting:
            subprocess.run([script, "drop-accounting"], capture_output=True, text=True, env=env, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def accounting_slurm_conf(slurm_conf):
    if keeps_accounting(slurm_conf):
        yield slurm_conf
        return
    with second_cluster(accounting=True) as conf:
        yield conf


@pytest.fixture(scope="session")
def plain_slurm_conf(slurm_conf):
    if not keeps_accounting(slurm_conf):
        yield slurm_conf
        return
    with second_cluster(accounting=False) as conf:
        yield conf


def _rest_of(conf, shared_conf):
    if conf == shared_conf and conf not in _REST:
        found = dev_slurm_environment()
        _REST[conf] = (found["SLURM_REST_URL"], found["SLURM_JWT_KEY_FILE"])
    return _REST.get(conf)


def _serves_slurmdb(url, key_file):
    from hpcportal.slurm.rest import SlurmRest, TokenSigner
    rest = SlurmRest(url, TokenSigner.from_file(key_file))
    try:
        return rest._request("GET", "/slurmdb/v0.0.38/jobs?step=1", "root")[0] != 404
    finally:
        rest.close()


@pytest.fixture(scope="session")
def slurmdb_rest(slurm_conf, accounting_slurm_conf):
    # A shared cluster given accounting after its slurmrestd started keeps a slurmrestd without /slurmdb/.
    rest = _rest_of(accounting_slurm_conf, slurm_conf)
    if rest and _serves_slurmdb(*rest):
        yield (accounting_slurm_conf, *rest)
        return
    with second_cluster(accounting=True) as conf:
        if conf not in _REST:
            pytest.skip("the second cluster runs no slurmrestd")
        yield (conf, *_REST[conf])


@pytest.fixture(scope="session")
def plain_rest(slurm_conf, plain_slurm_conf):
    rest = _rest_of(plain_slurm_conf, slurm_conf)
    if not rest:
        pytest.skip("the cluster without accounting runs no slurmrestd")
    return (plain_slurm_conf, *rest)
