"""Real unix accounts for tests: the daemon resolves tokens to them with pwd."""

import grp
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


# For the tests of sharing with a unix group: users of their own, so alice's and bob's
# groups stay as other tests expect them. group -> (gid, members).
GROUP_USERS = {"carol": 2004, "dave": 2005}
TEST_GROUPS = {"lab": (2100, ("carol", "dave")), "outsiders": (2101, ("dave",))}


def ensure_group(name, gid, members):
    try:
        grp.getgrnam(name)
    except KeyError:
        subprocess.run(["groupadd", "-g", str(gid), name], check=True)
    for member in members:
        if member not in grp.getgrnam(name).gr_mem:
            subprocess.run(["gpasswd", "-a", member, name], check=True, capture_output=True)
    return grp.getgrnam(name)


def ensure_group_users():
    users = {name: ensure_user(name, uid) for name, uid in GROUP_USERS.items()}
    groups = {name: ensure_group(name, gid, members) for name, (gid, members) in TEST_GROUPS.items()}
    return users, groups
