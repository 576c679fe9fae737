"""Proposing one's template for community/ and its review by administrators, against a real daemon."""

import json
import os
import sqlite3

import yaml

from support.templates import KOREAN, LIST, simple
from support.templates import portal, tree  # noqa: F401 (fixtures)
from support.waiting import wait_for

PROPOSALS = f"{LIST}/proposals"


def audit(tree, target):
    with sqlite3.connect(f"{tree.state}/portal.db") as conn:
        return conn.execute("SELECT user, action, outcome, detail FROM audit_record WHERE target = ? ORDER BY id",
                            (target,)).fetchall()


def notices(portal, user="alice"):
    answer = portal.get("/api/v2/notifications", user=user)
    assert answer.status_code == 200, answer.text
    return [n for n in answer.json()["notifications"] if n["type"] == "template.proposal"]


def create(portal, text, user="alice"):
    answer = portal.post(LIST, user=user, json={"yaml": text})
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_a_proposal_approved_lands_in_community_with_its_proposer_as_maintainer(portal, tree):
    mine = create(portal, "id: solver\n" + simple(name=KOREAN).replace("tags: [demo]", "tags: [demo]\nmaintainer: me"))
    answer = portal.post(f"{LIST}/users.alice.solver/publish", user="alice", json={"message": "공유 부탁드립니다"})
    assert answer.status_code == 201, answer.text
    proposal = answer.json()["proposal"]
    assert proposal["status"] == "pending" and proposal["proposer"] == "alice"
    assert proposal["community_id"] == "community.solver" and proposal["version"] == "1.0.0"
    assert proposal["message"] == "공유 부탁드립니다"
    again = portal.post(f"{LIST}/users.alice.solver/publish", user="alice")
    assert again.status_code == 409 and again.json()["error"] == "proposal_pending"
    # Later edits do not change what is reviewed.
    with open(mine["path"], "a", encoding="utf-8") as handle:
        handle.write("# edited after proposing\n")

    # The proposer and administrators see it; others do not.
    assert [p["id"] for p in portal.get(PROPOSALS, user="alice").json()["proposals"]] == [proposal["id"]]
    assert portal.get(PROPOSALS, user="bob").json() == {"proposals": [], "total": 0}
    assert portal.get(f"{PROPOSALS}/{proposal['id']}", user="bob").status_code == 404
    pending = portal.get(PROPOSALS, user="bob", admin=True, params={"status": "pending"}).json()
    assert [p["id"] for p in pending["proposals"]] == [proposal["id"]]
    assert "# edited after proposing" not in pending["proposals"][0]["yaml"]
    assert portal.get(PROPOSALS, user="bob", admin=True, params={"status": "maybe"}).status_code == 400

    denied = portal.post(f"{PROPOSALS}/{proposal['id']}/approve", user="alice")
    assert denied.status_code == 403
    approved = portal.post(f"{PROPOSALS}/{proposal['id']}/approve", user="bob", admin=True)
    assert approved.status_code == 200, approved.text
    decided = approved.json()["proposal"]
    assert decided["status"] == "approved" and decided["decided_by"] == "bob" and decided["decided_at"]

    # In community/ at once, for everyone, with alice as maintainer; written by the daemon, not alice.
    shared = portal.get(f"{LIST}/community.solver", user="bob")
    assert shared.status_code == 200, shared.text
    item = shared.json()
    assert item["source"] == "community" and item["name"] == KOREAN and item["maintainer"] == "alice"
    assert item["script"] == mine["script"]
    path = os.path.join(tree.templates, "community", "solver", "1.0.0.yaml")
    assert item["path"] == path and os.stat(path).st_uid == 0
    with open(path, encoding="utf-8") as handle:
        assert yaml.safe_load(handle)["maintainer"] == "alice"

    # The proposer is told, and reads the outcome on the proposal; it is decided once.
    told = notices(portal)
    assert len(told) == 1 and KOREAN in told[0]["title"] and "community.solver" in told[0]["message"]
    assert notices(portal, user="bob") == []
    mine_now = portal.get(f"{PROPOSALS}/{proposal['id']}", user="alice").json()["proposal"]
    assert mine_now["status"] == "approved"
    twice = portal.post(f"{PROPOSALS}/{proposal['id']}/reject", user="bob", admin=True, json={"reason": "late"})
    assert twice.status_code == 409 and twice.json()["error"] == "proposal_decided"
    # The same version cannot be proposed again; a newer one can.
    assert portal.post(f"{LIST}/users.alice.solver/publish", user="alice").status_code == 409

    rows = wait_for(lambda: audit(tree, f"proposal:{proposal['id']}"))
    assert rows[0][:3] == ("alice", f"POST /api/v2/templates/proposals/{{proposal_id}}/approve", "denied")
    approved_row = next(r for r in rows if r[2] == "ok")
    assert approved_row[0] == "bob" and json.loads(approved_row[3])["community_id"] == "community.solver"
    assert wait_for(lambda: audit(tree, "users.alice.solver"))


def test_a_rejected_proposal_tells_the_proposer_why(portal, tree):
    create(portal, "id: rough\n" + simple(name="Rough"))
    proposal = portal.post(f"{LIST}/users.alice.rough/publish", user="alice").json()["proposal"]
    assert portal.post(f"{PROPOSALS}/{proposal['id']}/reject", user="bob", admin=True,
                       json={}).status_code == 400
    rejected = portal.post(f"{PROPOSALS}/{proposal['id']}/reject", user="bob", admin=True,
                           json={"reason": "설명이 필요합니다 (needs a description)"})
    assert rejected.status_code == 200, rejected.text
    outcome = portal.get(PROPOSALS, user="alice", params={"status": "rejected"}).json()["proposals"]
    assert [(p["id"], p["status"], p["reason"]) for p in outcome] == [
        (proposal["id"], "rejected", "설명이 필요합니다 (needs a description)")]
    told = notices(portal)[0]
    assert "not added" in told["title"] and "설명이 필요합니다" in told["message"]
    assert portal.get(f"{LIST}/community.rough", user="alice").status_code == 404
    assert not os.path.exists(os.path.join(tree.templates, "community", "rough"))
    # Rejected: it may be proposed again.
    assert portal.post(f"{LIST}/users.alice.rough/publish", user="alice").status_code == 201


def test_only_ones_own_templates_are_proposed(portal, tree):
    create(portal, "id: bobs\n" + simple(name="Bob's"), user="bob")
    assert portal.post(f"{LIST}/users.bob.bobs/publish", user="alice").status_code == 404
    community = portal.post(f"{LIST}/community.solver/publish", user="alice")
    assert community.status_code == 403 and community.json()["error"] == "not_your_template"
    admin = portal.post(f"{LIST}/users.bob.bobs/publish", user="alice", admin=True)
    assert admin.status_code == 403
    assert portal.post(f"{LIST}/users.bob.bobs/publish", user="bob", json={"version": "9.9.9"}).status_code == 404
    assert portal.post(f"{PROPOSALS}/12345/approve", user="bob", admin=True).status_code == 404
    assert portal.post(f"{PROPOSALS}/x/approve", user="bob", admin=True).status_code == 404
    assert portal.get(PROPOSALS).status_code == 401
