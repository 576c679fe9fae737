"""Real unix accounts for tests: the daemon resolves tokens to them with pwd."""

import os
import pwd
import subprocess

# name -> uid; uids above the default users.min_uid (1000).
TEST_USERS = {"alice": 2001, "bob": 2002}


def ensure_user(name, uid):
    try:
        entry = pwd.getpwnam(name)
        return entry
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise RuntimeError(f"test user {name} is missing and only root can create it")
    subprocess.run(["groupadd", "-f", "-g", str(uid), name], check=True)
    subprocess.run(["useradd", "-m", "-u", str(uid), "-g", str(uid), "-s", "/bin/bash", name],
                   check=True)
    return pwd.getpwnam(name)


def ensure_test_users():
    return {name: ensure_user(name, uid) for name, uid in TEST_USERS.items()}
