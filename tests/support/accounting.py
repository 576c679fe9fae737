"""Slurm clusters with and without accounting for the usage tests.

``accounting_slurm_conf`` (session fixture): a cluster with slurmdbd and
jobacct_gather/linux; ``plain_slurm_conf``: one without accounting. Each is the
shared cluster when it is of that kind (CI starts it fresh with
``scripts/dev-slurm``, which sets accounting up; a cluster started by an older
script has none); otherwise a second cluster beside it, started with
``scripts/dev-slurm`` in a folder of its own, on its own ports, without touching
/etc/slurm, and stopped at the end of the session.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile

import pytest

from support.daemon import free_port
from support.slurm import REPO


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
        yield conf
    finally:
        subprocess.run([script, "stop"], capture_output=True, text=True, env=env, timeout=300)
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
