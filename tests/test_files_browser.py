"""The file browser: GET /api/v2/files with a name search, kind, job and sort, paged."""

import pytest

from support.uploads import SMALL, upload

FILES = "/api/v2/files"


def names(answer):
    assert answer.status_code == 200, answer.text
    return [f["filename"] for f in answer.json()["files"]]


def test_search_filter_sort_and_page(daemon_factory):
    daemon = daemon_factory(config=SMALL)
    stored = {}
    for name, data, job in [("결과 파일.csv", b"a,b\n1,2\n", "tmp-1"), ("Mesh_100%.msh", b"$MeshFormat\n" * 40, None),
                            ("readme.TXT", b"hello\n", "tmp-1"), ("Ärger.txt", b"x" * 3000, None),
                            ("mesh_1.txt", b"m\n" * 10, None)]:
        stored[name] = upload(daemon, "alice", data, filename=name, chunk_size=1024, job_id=job)
    upload(daemon, "bob", b"bob's\n", filename="결과 bob.csv")

    assert names(daemon.get(FILES, user="alice", params={"q": "결과"})) == ["결과 파일.csv"]
    assert names(daemon.get(FILES, user="alice", params={"q": "과 파"})) == ["결과 파일.csv"]
    # Case-folded on every backend, also beyond ASCII; LIKE's wildcards are plain characters.
    assert names(daemon.get(FILES, user="alice", params={"q": "README"})) == ["readme.TXT"]
    assert names(daemon.get(FILES, user="alice", params={"q": "ärg"})) == ["Ärger.txt"]
    assert names(daemon.get(FILES, user="alice", params={"q": "100%"})) == ["Mesh_100%.msh"]
    assert names(daemon.get(FILES, user="alice", params={"q": "h_1."})) == ["mesh_1.txt"]
    assert names(daemon.get(FILES, user="alice", params={"q": "%"})) == ["Mesh_100%.msh"]
    assert names(daemon.get(FILES, user="alice", params={"q": "_", "sort": "name"})) == [
        "mesh_1.txt", "Mesh_100%.msh"]

    assert names(daemon.get(FILES, user="alice", params={"sort": "name"})) == [
        "mesh_1.txt", "Mesh_100%.msh", "readme.TXT", "Ärger.txt", "결과 파일.csv"]
    assert names(daemon.get(FILES, user="alice", params={"sort": "-name"}))[0] == "결과 파일.csv"
    by_size = names(daemon.get(FILES, user="alice", params={"sort": "-size"}))
    assert by_size[:2] == ["Ärger.txt", "Mesh_100%.msh"] and by_size[-1] == "readme.TXT"
    assert names(daemon.get(FILES, user="alice", params={"sort": "size"}))[0] == "readme.TXT"
    # Uploaded within a second or two: ties are broken by the file id, reversed with the order.
    oldest_first = daemon.get(FILES, user="alice", params={"sort": "time"}).json()["files"]
    stamps = [f["created_at"] for f in oldest_first]
    assert stamps == sorted(stamps)
    assert names(daemon.get(FILES, user="alice")) == [f["filename"] for f in reversed(oldest_first)]

    assert names(daemon.get(FILES, user="alice", params={"kind": "text", "sort": "name"})) == [
        "mesh_1.txt", "readme.TXT", "Ärger.txt"]
    assert names(daemon.get(FILES, user="alice", params={"job_id": "tmp-1", "sort": "name"})) == [
        "readme.TXT", "결과 파일.csv"]
    page = daemon.get(FILES, user="alice", params={"sort": "name", "limit": 2, "offset": 2}).json()
    assert [f["filename"] for f in page["files"]] == ["readme.TXT", "Ärger.txt"]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 2)
    assert daemon.get(FILES, user="alice", params={"q": "txt", "limit": 1}).json()["total"] == 3
    assert all(f["owner"] == "alice" for f in daemon.get(FILES, user="alice").json()["files"])


@pytest.mark.databases("sqlite")  # refusals happen before any query
@pytest.mark.parametrize("params, field", [
    ({"sort": "colour"}, "sort"), ({"sort": "--name"}, "sort"), ({"kind": "picture"}, "kind"),
    ({"q": "a\x00b"}, "q"), ({"q": "x" * 256}, "q"), ({"shared": "maybe"}, "shared"),
    ({"limit": "0"}, "limit")])
def test_bad_browser_parameters_are_named(daemon_factory, params, field):
    daemon = daemon_factory(config=SMALL)
    answer = daemon.get(FILES, user="alice", params=params)
    assert answer.status_code == 400, answer.text
    assert field in answer.json()["errors"], answer.json()


@pytest.mark.unit
def test_migration_18_fills_the_name_key_of_older_files(tmp_path):
    from hpcportal import db as dbmod
    from hpcportal.config import Config
    from hpcportal.models.uploads import UploadedFile

    database = dbmod.open_database(Config.from_dict({"database": {"url": f"sqlite:///{tmp_path}/p.db"}}))
    dbmod.upgrade(database)
    with database.connection_context():
        UploadedFile.create(id="f1", upload_id="u1", user="alice", filename="Ärger Ü.txt", name_key=None, size=1,
                            sha256="0" * 64, file_type="text", mime_type="text/plain", storage_path="/x",
                            storage_path_hash="h")
        dbmod.SchemaMigration.delete().where(dbmod.SchemaMigration.version == 18).execute()
    assert [number for number, _ in dbmod.upgrade(database)] == [18]
    with database.connection_context():
        assert UploadedFile.get_by_id("f1").name_key == "ärger ü.txt"
