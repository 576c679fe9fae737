"""Users' own templates through the API, against a real daemon and real files."""

import os
import pwd

from support.templates import KOREAN, LIST, drop, simple
from support.templates import portal, tree  # noqa: F401 (fixtures)
from support.waiting import wait_for


def post(portal, text, user="alice", **kwargs):
    return portal.post(LIST, user=user, json={"yaml": text}, **kwargs)


def put(portal, template_id, text, user="alice", admin=False):
    return portal.request("PUT", f"{LIST}/{template_id}", user=user, admin=admin, json={"yaml": text})


def test_a_posted_template_is_the_users_own_file_and_listed_at_once(portal, tree):
    text = simple(name=KOREAN)
    answer = post(portal, text)
    assert answer.status_code == 201, answer.text
    item = answer.json()
    assert item["id"] == "users.alice.template" and item["name"] == KOREAN
    assert item["source"] == "users/alice" and item["owner"] == "alice" and item["versions"] == ["1.0.0"]
    assert answer.headers["Location"] == f"{LIST}/users.alice.template"
    # Exactly what GET answers, and in the list without waiting for the watcher.
    assert portal.get(f"{LIST}/users.alice.template", user="alice").json() == item
    assert "users.alice.template" in [t["id"] for t in portal.get(LIST, user="alice").json()["templates"]]

    path = os.path.join(tree.templates, "users", "alice", "template", "1.0.0.yaml")
    assert item["path"] == path
    info = os.stat(path)
    assert info.st_uid == pwd.getpwnam("alice").pw_uid
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == "id: template\n" + text
    folder = os.stat(os.path.dirname(os.path.dirname(path)))
    # Private to alice on disk too, as in the API.
    assert folder.st_uid == info.st_uid and folder.st_mode & 0o777 == 0o700 and info.st_mode & 0o077 == 0
    # users/ itself is the daemon's, and every user passes through it.
    users = os.stat(os.path.join(tree.templates, "users"))
    assert users.st_uid == 0 and users.st_mode & 0o777 == 0o755

    # Another name without Latin letters gets a free id; a Latin name its own slug.
    again = post(portal, simple(name="다른 결과 파일"))
    assert again.status_code == 201 and again.json()["id"] == "users.alice.template-2"
    named = post(portal, simple(name="My Run 1"))
    assert named.status_code == 201 and named.json()["id"] == "users.alice.my-run-1"
    # Other users do not see them.
    assert portal.get(f"{LIST}/users.alice.template", user="bob").status_code == 404
    assert "users.alice.template" not in [t["id"] for t in portal.get(LIST, user="bob").json()["templates"]]


def test_invalid_templates_are_refused_naming_line_and_path(portal, tree):
    bad_version = simple(name="Bad").replace('version: "1.0.0"', "version: 1.1")
    answer = post(portal, bad_version)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"] == "invalid_template"
    assert "line 2" in body["errors"]["version"]
    assert {"path": "version", "line": 2}.items() <= body["problems"][0].items()

    broken = post(portal, "name: x\nversion: \"1.0.0\"\nscript: [unclosed\n")
    assert broken.status_code == 400 and "line" in broken.json()["errors"]["yaml"]
    sbatch = post(portal, simple(name="Sbatch").replace("script: |\n", "script: |\n  #SBATCH --uid=0\n"))
    assert sbatch.status_code == 400 and "script" in sbatch.json()["errors"]

    assert post(portal, None).status_code == 400
    assert portal.post(LIST, user="alice", json={}).json()["errors"] == {
        "yaml": "required: the template's YAML text"}
    assert post(portal, "x" * (1024 * 1024 + 1)).status_code in (400, 413)
    assert portal.post(LIST, json={"yaml": simple()}).status_code == 401
    # Nothing was written for any of them.
    assert not os.path.exists(os.path.join(tree.templates, "users", "alice", "bad"))


def test_new_versions_and_deletion_of_ones_own_only(portal, tree):
    created = post(portal, "id: solver\n" + simple(name="Solver"))
    assert created.status_code == 201 and created.json()["id"] == "users.alice.solver"
    assert post(portal, "id: solver\n" + simple(name="Solver")).status_code == 409

    newer = put(portal, "users.alice.solver", simple(name="Solver 결과 파일", version="1.1.0"))
    assert newer.status_code == 200, newer.text
    assert newer.json()["version"] == "1.1.0" and newer.json()["versions"] == ["1.0.0", "1.1.0"]
    assert newer.json()["name"] == "Solver 결과 파일"
    again = put(portal, "users.alice.solver", simple(version="1.1.0"))
    assert again.status_code == 409 and again.json()["error"] == "template_version_exists"
    other_id = put(portal, "users.alice.solver", "id: other\n" + simple(version="2.0.0"))
    assert other_id.status_code == 400 and "id" in other_id.json()["errors"]
    assert put(portal, "users.alice.solver", simple(version="bad")).status_code == 400

    # Others: someone else's template is not found; a shared one is not theirs to change.
    drop(tree, "official/shared.yaml", simple(name="Shared"))
    wait_for(lambda: portal.get(f"{LIST}/official.shared", user="alice").status_code == 200)
    assert put(portal, "users.alice.solver", simple(version="3.0.0"), user="bob").status_code == 404
    assert portal.delete(f"{LIST}/users.alice.solver", user="bob").status_code == 404
    refused = put(portal, "official.shared", simple(version="2.0.0"))
    assert refused.status_code == 403 and refused.json()["error"] == "not_your_template"
    assert portal.delete(f"{LIST}/official.shared", user="alice").status_code == 403
    # An administrator sees alice's template but it stays hers.
    assert put(portal, "users.alice.solver", simple(version="3.0.0"), user="bob", admin=True).status_code == 403
    assert portal.delete(f"{LIST}/users.alice.nothing", user="alice").status_code == 404

    portal.request("PUT", f"{LIST}/users.alice.solver/favourite", user="alice")
    one = portal.delete(f"{LIST}/users.alice.solver", user="alice", params={"version": "1.0.0"})
    assert one.status_code == 204, one.text
    assert portal.get(f"{LIST}/users.alice.solver", user="alice").json()["versions"] == ["1.1.0"]
    folder = os.path.join(tree.templates, "users", "alice", "solver")
    assert os.listdir(folder) == ["1.1.0.yaml"]
    assert portal.delete(f"{LIST}/users.alice.solver", user="alice", params={"version": "9.9.9"}).status_code == 404
    assert portal.delete(f"{LIST}/users.alice.solver", user="alice").status_code == 204
    assert portal.get(f"{LIST}/users.alice.solver", user="alice").status_code == 404
    assert not os.path.exists(folder)
    # Gone for good: a new template of that id is no one's favourite.
    assert post(portal, "id: solver\n" + simple(name="Solver")).json()["favourite"] is False


def test_hand_made_files_in_the_users_folder_are_theirs_too(portal, tree):
    path = drop(tree, "users/alice/by-hand.yaml", simple(name="By hand"))
    os.chown(path, pwd.getpwnam("alice").pw_uid, -1)
    wait_for(lambda: portal.get(f"{LIST}/users.alice.by-hand", user="alice").status_code == 200)
    newer = put(portal, "users.alice.by-hand", simple(name="By hand", version="2.0.0"))
    assert newer.status_code == 200 and newer.json()["versions"] == ["1.0.0", "2.0.0"]
    assert portal.delete(f"{LIST}/users.alice.by-hand", user="alice").status_code == 204
    assert not os.path.exists(path)


def test_links_in_a_users_folder_are_never_followed(portal, tree):
    # A file alice may not read, holding a valid template.
    secret = os.path.join(tree.state, "secret.yaml")
    with open(secret, "w", encoding="utf-8") as handle:
        handle.write(simple(name="Root's secret"))
    os.chmod(secret, 0o600)
    folder = os.path.join(tree.templates, "users", "alice")
    os.symlink(secret, os.path.join(folder, "stolen.yaml"))
    os.link(secret, os.path.join(folder, "hard.yaml"))

    def invalid():
        listed = portal.get(LIST, user="bob", admin=True, params={"include_invalid": "true"}).json()
        return {t["relpath"]: t for t in listed["templates"] if not t["valid"]}
    wait_for(lambda: {"users/alice/stolen.yaml", "users/alice/hard.yaml"} <= set(invalid()), show=invalid)
    invalid = invalid()
    assert "not read" in invalid["users/alice/stolen.yaml"]["errors"][0]["message"]
    assert "Root's secret" not in str(invalid)

    # A folder alice links to a place only root may write: the write, done as alice, fails.
    target = os.path.join(tree.state, "root-only")
    os.makedirs(target, mode=0o755)
    os.symlink(target, os.path.join(folder, "trap"))
    trapped = post(portal, "id: trap\n" + simple(name="Trap"))
    assert trapped.status_code in (409, 503), trapped.text
    assert os.listdir(target) == []
