"""The Ansible role's preflight check for slurmrestd (files/slurm_jwt_check.py),
run here on files: what it reads from slurm.conf and what it says about the key.
The two-head lab (tests/deploy) runs it on real heads against a real cluster."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

SCRIPT = (pathlib.Path(__file__).resolve().parents[1] / "ansible" / "roles" / "hpcportal" / "files"
          / "slurm_jwt_check.py")


def check(conf, key):
    answer = subprocess.run([sys.executable, str(SCRIPT), str(conf), str(key)], capture_output=True,
                            text=True, check=True, env={"PATH": "/nonexistent"})
    return json.loads(answer.stdout)


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "jwt_hs256.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def test_jwt_among_the_alternative_types_in_any_case(tmp_path, key):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nauthalttypes=auth/other,AUTH/JWT  # comment\n")
    answer = check(conf, key)
    assert (answer["jwt"], answer["source"], answer["alt_types"]) == (True, str(conf), "auth/other,AUTH/JWT")


def test_a_commented_out_or_missing_line_is_no_jwt(tmp_path, key):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n#AuthAltTypes=auth/jwt\n")
    answer = check(conf, key)
    assert answer["jwt"] is False and answer["alt_types"] == ""


def test_included_files_count_and_the_last_setting_wins(tmp_path, key):
    (tmp_path / "auth.conf").write_text("AuthAltTypes=auth/jwt\n")
    conf = tmp_path / "slurm.conf"
    conf.write_text("AuthAltTypes=auth/none\nInclude auth.conf\n")
    assert check(conf, key)["jwt"] is True
    conf.write_text("Include auth.conf\nAuthAltTypes=auth/none\n")
    assert check(conf, key)["jwt"] is False


def test_no_file_and_no_scontrol_is_unknown(tmp_path, key):
    answer = check(tmp_path / "absent.conf", key)
    assert answer["jwt"] is None and "scontrol is not installed" in answer["source"]


@pytest.mark.skipif(os.geteuid() != 0, reason="root owns the key on a head")
def test_the_key_must_be_there_root_owned_and_0600(tmp_path, key):
    conf = tmp_path / "slurm.conf"
    conf.write_text("AuthAltTypes=auth/jwt\n")
    assert check(conf, key)["key_problem"] == ""
    assert check(conf, tmp_path / "none.key")["key_problem"] == f"the JWT key {tmp_path}/none.key is not on this head"
    key.chmod(0o640)
    assert check(conf, key)["key_problem"] == (
        f"the JWT key {key} is open to group or others (mode 0640, needs 0600)")
    key.chmod(0o600)
    os.chown(key, 2001, 0)
    assert check(conf, key)["key_problem"] == f"the JWT key {key} is owned by uid 2001, not root"
