"""Favourite templates per user, against a real daemon and the shared database."""

import pytest

from support.templates import LIST, drop, simple
from support.waiting import wait_for


def ids(answer):
    assert answer.status_code == 200, answer.text
    return sorted(t["id"] for t in answer.json()["templates"])


def test_favourites_are_per_user_and_filter_the_list(shared_dir, daemon_factory):
    drop(shared_dir, "official/one.yaml", simple(name="One"))
    drop(shared_dir, "official/two.yaml", simple(name="Two"))
    drop(shared_dir, "users/alice/mine.yaml", simple(name="Alice's"))
    first = daemon_factory()
    wait_for(lambda: len(ids(first.get(LIST, user="alice"))) == 3)

    marked = first.request("PUT", f"{LIST}/official.two/favourite", user="alice")
    assert marked.status_code == 200, marked.text
    assert marked.json()["id"] == "official.two" and marked.json()["favourite"] is True
    # Idempotent.
    assert first.request("PUT", f"{LIST}/official.two/favourite", user="alice").status_code == 200
    assert first.request("PUT", f"{LIST}/users.alice.mine/favourite", user="alice").status_code == 200

    listed = {t["id"]: t["favourite"] for t in first.get(LIST, user="alice").json()["templates"]}
    assert listed == {"official.one": False, "official.two": True, "users.alice.mine": True}
    assert ids(first.get(LIST, user="alice", params={"favourite": "true"})) == ["official.two", "users.alice.mine"]
    assert ids(first.get(LIST, user="alice", params={"favourite": "false"})) == ["official.one"]
    assert first.get(f"{LIST}/official.two", user="alice").json()["favourite"] is True
    # The list's ETag changes with the caller's favourites.
    etag = first.get(LIST, user="alice").headers["ETag"]

    # Bob has his own (none yet), and cannot mark alice's template: he does not see it.
    assert ids(first.get(LIST, user="bob", params={"favourite": "true"})) == []
    assert first.get(f"{LIST}/official.two", user="bob").json()["favourite"] is False
    hidden = first.request("PUT", f"{LIST}/users.alice.mine/favourite", user="bob")
    assert hidden.status_code == 404 and hidden.json()["error"] == "template_not_found"
    assert first.request("PUT", f"{LIST}/official.nothing/favourite", user="bob").status_code == 404
    assert first.get(LIST, user="bob", params={"favourite": "maybe"}).status_code == 400

    unmarked = first.request("DELETE", f"{LIST}/official.two/favourite", user="alice")
    assert unmarked.status_code == 200 and unmarked.json()["favourite"] is False
    assert first.request("DELETE", f"{LIST}/official.two/favourite", user="alice").status_code == 200
    assert ids(first.get(LIST, user="alice", params={"favourite": "true"})) == ["users.alice.mine"]
    assert first.get(LIST, user="alice", headers={"If-None-Match": etag}).status_code == 200

    # Kept in the database: a second head node on the same database answers the same.
    second = daemon_factory()
    assert ids(second.get(LIST, user="alice", params={"favourite": "true"})) == ["users.alice.mine"]
    assert first.request("PUT", f"{LIST}/official.one/favourite").status_code == 401
