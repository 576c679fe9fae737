#!/usr/bin/python3
"""Preflight of the hpcportal role: can this head's daemon use slurmrestd?

usage: slurm_jwt_check.py SLURM_CONF JWT_KEY_FILE
Prints one JSON object: ``jwt`` (true/false; null when the cluster's settings could
not be read), ``source`` (what was read), ``alt_types`` and ``key_problem`` ("" when
the key file is fine). Only reads: the role never edits slurm.conf.
"""

import glob
import json
import os
import re
import shutil
import stat
import subprocess
import sys


def conf_lines(path, seen=None):
    """slurm.conf's lines, with its Include files in place (keys are case-insensitive)."""
    seen = set() if seen is None else seen
    if path in seen:
        return
    seen.add(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            include = re.match(r"(?i)include\s+(.+)$", line)
            if include:
                pattern = include.group(1).strip()
                if not os.path.isabs(pattern):
                    pattern = os.path.join(os.path.dirname(path), pattern)
                for name in sorted(glob.glob(pattern)):
                    yield from conf_lines(name, seen)
            elif line:
                yield line


def alt_types_from_file(path):
    value = ""
    for line in conf_lines(path):
        for key, val in re.findall(r"(\w+)=(\S*)", line):
            if key.lower() == "authalttypes":
                value = val  # the last one wins, as in Slurm
    return value


def alt_types_from_scontrol(conf):
    """A configless head has no slurm.conf: ask slurmctld for the running config."""
    scontrol = shutil.which("scontrol")
    if not scontrol:
        return None, f"{conf} does not exist and scontrol is not installed"
    try:
        answer = subprocess.run([scontrol, "show", "config"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None, "scontrol show config did not answer in 30 s"
    if answer.returncode != 0:
        return None, f"scontrol show config failed: {(answer.stderr or answer.stdout).strip()[:300]}"
    found = re.search(r"^AuthAltTypes\s*=\s*(\S*)", answer.stdout, re.M | re.I)
    value = found.group(1) if found else ""
    return ("" if value == "(null)" else value), "scontrol show config"


def key_problem(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"the JWT key {path} is not on this head"
    except OSError as exc:
        return f"the JWT key {path} cannot be read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"the JWT key {path} is not a regular file"
    if st.st_uid != 0:
        return f"the JWT key {path} is owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o077:
        # The daemon refuses it too: the key signs tokens for any Slurm user.
        return f"the JWT key {path} is open to group or others (mode {stat.S_IMODE(st.st_mode):04o}, needs 0600)"
    if st.st_size == 0:
        return f"the JWT key {path} is empty"
    return ""


def check(conf, key):
    if os.path.exists(conf):
        try:
            alt_types, source = alt_types_from_file(conf), conf
        except OSError as exc:
            alt_types, source = None, f"{conf} cannot be read: {exc.strerror}"
    else:
        alt_types, source = alt_types_from_scontrol(conf)
    jwt = None if alt_types is None else "auth/jwt" in [t.strip().lower() for t in alt_types.split(",")]
    return {"jwt": jwt, "source": source, "alt_types": alt_types or "", "key_problem": key_problem(key)}


if __name__ == "__main__":
    print(json.dumps(check(sys.argv[1], sys.argv[2])))
