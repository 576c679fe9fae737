"""Catalogs on two heads sharing one folder tree and one MariaDB.

Every head watches the folders and indexes them into the shared database with
idempotent upserts keyed by the path's hash (no lease, no leader): whichever
head sees a change first writes it, the other's write is a no-op, and a head
that was down reconciles the folder with the index when it starts. These tests
hold the heads to that: one view on both, no duplicate rows, nothing lost
while a head is down."""

import functools
import os
import re
import shutil

import pytest

from support.waiting import wait_for
from support.daemon import REPO
from support.databases import query

pytestmark = pytest.mark.databases("mariadb", "postgres")

WAIT = 60
EXAMPLE = os.path.join(REPO, "examples", "templates", "official", "python-script.yaml")


wait_until = functools.partial(wait_for, timeout=WAIT)



def _template_ids(head):
    answer = head.get("/api/v2/templates", user="alice", params={"limit": 500})
    assert answer.status_code == 200, answer.text
    return sorted(item["id"] for item in answer.json()["templates"])


def _drop_template(shared_dir, stem, name):
    """A copy of an official example with its own name, renamed into place like rsync does."""
    text = open(EXAMPLE, encoding="utf-8").read()
    text = re.sub(r"^name: .*$", f"name: {name}", text, count=1, flags=re.M)
    folder = os.path.join(shared_dir.templates, "official")
    temporary = os.path.join(folder, f".{stem}.yaml.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.rename(temporary, os.path.join(folder, f"{stem}.yaml"))


def test_template_dropped_while_one_head_is_down_appears_on_both(daemon_factory, shared_dir, db_url):
    a = daemon_factory()
    b = daemon_factory()
    before = _template_ids(a)
    assert _template_ids(b) == before

    b.stop()
    _drop_template(shared_dir, "while-down", "Dropped while head B was down")
    after = wait_until(lambda: (ids := _template_ids(a)) != before and ids, message="indexed by A")
    assert len(after) == len(before) + 1

    b.start()
    assert _template_ids(b) == after
    rows = query(db_url, "SELECT COUNT(*) FROM catalog_templates WHERE relpath = %s",
                 ("official/while-down.yaml",))
    assert rows[0][0] == 1


def test_both_heads_index_the_same_changes_without_duplicates(daemon_factory, shared_dir, db_url):
    heads = [daemon_factory(), daemon_factory()]
    stems = [f"bulk-{n:02d}" for n in range(12)]
    for stem in stems:
        _drop_template(shared_dir, stem, f"Bulk {stem}")

    def settled():
        views = [_template_ids(head) for head in heads]
        return views[0] == views[1] and len(views[0]) == len(stems) and views[0]

    ids = wait_until(settled, message="both heads list every new template")
    relpaths = [row[0] for row in query(db_url, "SELECT relpath FROM catalog_templates")]
    assert len(relpaths) == len(set(relpaths)) == len(ids)

    for stem in stems[:5]:
        os.remove(os.path.join(shared_dir.templates, "official", f"{stem}.yaml"))
    shutil.copy(os.path.join(shared_dir.templates, "official", f"{stems[5]}.yaml"),
                os.path.join(shared_dir.templates, "official", "copy.yaml"))

    def after_changes():
        views = [_template_ids(head) for head in heads]
        return views[0] == views[1] and len(views[0]) == len(stems) - 5 + 1 and views[0]

    wait_until(after_changes, message="removals and a new copy seen by both heads")
    count = query(db_url, "SELECT COUNT(*) FROM catalog_templates")[0][0]
    assert count == len(stems) - 5 + 1
    # A forced rescan on either head finds nothing left to do.
    for head in heads:
        scan = head.post("/api/v2/templates/scan", user="alice", admin=True)
        assert scan.status_code == 200, scan.text
        assert scan.json()["added"] == scan.json()["removed"] == 0
