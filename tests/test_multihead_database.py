"""Several heads on one MariaDB: simultaneous start-up on an empty database,
and the database server going away (clean stop, then SIGKILL) under running
heads: 503 while it is gone, everything back afterwards, no restart of a
head, nothing acknowledged lost, background services included."""

import functools
import os

import pytest

from hpcportal.db import MIGRATIONS
from support.waiting import wait_for
from support.databases import DatabaseServer, create_database, query
from support.sifbuild import build_sif

pytestmark = pytest.mark.databases("mariadb", "postgres")

WAIT = 60  # generous bound for asynchronous effects; tests never assert timings


wait_until = functools.partial(wait_for, timeout=WAIT)



def test_three_heads_started_at_once_migrate_an_empty_database_once(daemon_factory, db_url):
    heads = [daemon_factory(start=False) for _ in range(3)]
    for head in heads:
        head.start(wait=False)
    for head in heads:
        head.wait_ready()

    applied = [row[0] for row in query(db_url, "SELECT version FROM schema_migrations ORDER BY version")]
    assert applied == [number for number, _, _ in MIGRATIONS]
    migrating = [head for head in heads if "applying migration 1:" in head.logs()]
    assert len(migrating) == 1
    for head in heads:
        assert head.get("/readyz").json()["checks"]["database"]["ok"] is True
        assert head.get("/api/v2/apptainer/images", user="alice").status_code == 200


@pytest.fixture
def private_server(request):
    """A server of the test's backend that it may stop and kill without
    disturbing the others."""
    server = DatabaseServer(request.node.callspec.params["db_url"])
    server.start()
    yield server
    server.cleanup()


def _database_is_gone(head):
    answer = head.get("/api/v2/files", user="alice")
    return [answer] if answer.status_code == 503 else None  # a 503 Response is falsy


def _serves(head):
    return head.get("/api/v2/files", user="alice").status_code == 200


def _init_upload(head, name, size=10):
    answer = head.post("/api/v2/files/upload/init", user="alice",
                       json={"filename": name, "size": size})
    assert answer.status_code == 201, answer.text
    return answer.json()["upload_id"]


@pytest.mark.parametrize("outage", ["stop", "kill"])
def test_heads_answer_503_while_the_database_is_down_then_resume(
        daemon_factory, private_server, shared_dir, outage):
    url = create_database(private_server.url)
    heads = [daemon_factory(config={"database": {"url": url}}) for _ in range(2)]
    a, b = heads
    acknowledged = _init_upload(a, "before.dat")

    if outage == "stop":
        private_server.stop()
    else:
        private_server.kill()

    for head in heads:
        answer, = wait_until(lambda: _database_is_gone(head), message="503 while the database is down")
        body = answer.json()
        assert body["success"] is False and body["error"] == "database_unavailable"
        assert answer.headers["Retry-After"]
        ready = head.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"]["ok"] is False
        assert head.get("/healthz").status_code == 200  # alive: no reason to restart the head
        failed = head.post("/api/v2/files/upload/init", user="alice",
                           json={"filename": "during.dat", "size": 10})
        assert failed.status_code == 503 and failed.json()["success"] is False
    # The watcher notices a new image while the database is away; indexing it
    # fails now and must succeed later without any help.
    build_sif(os.path.join(shared_dir.images, "compute", f"during-{outage}.sif"),
              labels={"org.opencontainers.image.version": "1.0"})

    private_server.start()

    for head in heads:
        wait_until(lambda: _serves(head), message="requests served again")
        assert head.get(f"/api/v2/files/upload/{acknowledged}", user="alice").status_code == 200
        assert head.get("/readyz").json()["checks"]["database"]["ok"] is True
    # Requests on every worker thread work again (each holds its own connection).
    for _ in range(20):
        for head in heads:
            assert _serves(head)
    later = _init_upload(b, "after.dat")
    assert a.get(f"/api/v2/files/upload/{later}", user="alice").status_code == 200

    def image_listed(head):
        images = head.get("/api/v2/apptainer/images", user="alice").json()["images"]
        return any(image["name"] == f"during-{outage}.sif" for image in images)

    for head in heads:
        wait_until(lambda: image_listed(head), message="image dropped during the outage indexed")
    assert all(head.proc.poll() is None for head in heads)

