"""The generic indexer with a kind of its own (text notes), in process.

This is the contract the template catalog builds on: a kind supplies root,
accepts, parse and storage; the indexer decides what changed and when to read.
The daemon-level behaviour (watchers, settling, several daemons) is covered
by tests/test_catalog_images.py.
"""

import os
import time
from types import SimpleNamespace

import peewee
import pytest
from prometheus_client import CollectorRegistry

from hpcportal.catalog import watcher
from hpcportal.catalog.index_store import ModelKind, generation
from hpcportal.catalog.indexer import Indexer, is_temporary
from hpcportal.catalog.kinds import Entry, FileState, InvalidFile
from hpcportal.models.catalog import CatalogGeneration, IndexedFile
from support.waiting import wait_for

# In process: no daemon, no Slurm, no database server (`pytest -m unit`).
pytestmark = pytest.mark.unit


class Note(IndexedFile):
    body = peewee.TextField(null=True)

    class Meta:
        table_name = "test_notes"


class NoteKind(ModelKind):
    name = "notes"
    model = Note

    def __init__(self, database, root):
        super().__init__(database)
        self.root = root
        self.reads = []
        self.scans = []

    def accepts(self, relpath):
        return relpath.endswith(".txt")

    def parse(self, path, relpath):
        self.reads.append(relpath)
        with open(path) as handle:
            text = handle.read()
        if "bad" in text:
            raise InvalidFile("this note is bad")
        if "boom" in text:
            raise RuntimeError("parser bug")
        return {"text": text}

    def columns(self, entry):
        return {"body": (entry.document or {}).get("text")}

    def after_scan(self, result):
        self.scans.append(result)


def settings(**overrides):
    values = dict(settle_seconds=0, poll_interval=0.5, rescan_interval=600, watcher="auto")
    values.update(overrides)
    return SimpleNamespace(**values)


@pytest.fixture
def database(tmp_path):
    db = peewee.SqliteDatabase(str(tmp_path / "index.db"), pragmas={"journal_mode": "wal"})
    db.bind([Note, CatalogGeneration])
    db.create_tables([Note, CatalogGeneration])
    yield db
    db.close()


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    return folder


def make(database, root, **overrides):
    kind = NoteKind(database, str(root))
    indexer = Indexer(settings(**overrides), CollectorRegistry(), database=database)
    indexer.register(kind)
    return indexer, kind


def write(path, text, mtime=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def rows():
    return {n.relpath: (n.valid, n.error, n.body) for n in Note.select()}


def test_scan_adds_skips_unchanged_rereads_changed_and_removes(database, root):
    indexer, kind = make(database, root)
    write(root / "a.txt", "alpha")
    write(root / "sub" / "b.txt", "beta")
    write(root / "ignored.md", "not a note")
    result = indexer.scan()["notes"]
    assert sorted(result.added) == ["a.txt", "sub/b.txt"]
    assert rows() == {"a.txt": (True, None, "alpha"), "sub/b.txt": (True, None, "beta")}

    kind.reads.clear()
    result = indexer.scan()["notes"]
    assert (result.added, result.updated, result.removed, result.unchanged) == ([], [], [], 2)
    assert kind.reads == []          # unchanged files are not read again

    write(root / "a.txt", "ALPHA")   # same size; the mtime moves
    os.remove(root / "sub" / "b.txt")
    result = indexer.scan()["notes"]
    assert result.updated == ["a.txt"] and result.removed == ["sub/b.txt"]
    assert rows() == {"a.txt": (True, None, "ALPHA")}


def test_a_replacement_with_same_size_and_mtime_is_seen_by_its_inode(database, root):
    indexer, kind = make(database, root)
    write(root / "a.txt", "one", mtime=1_000_000)
    indexer.scan()
    write(root / "new.tmp", "two", mtime=1_000_000)
    os.replace(root / "new.tmp", root / "a.txt")
    assert indexer.scan()["notes"].updated == ["a.txt"]
    assert rows()["a.txt"][2] == "two"


def test_invalid_files_are_stored_with_the_reason_and_retried_when_changed(database, root):
    indexer, kind = make(database, root)
    write(root / "x.txt", "bad note")
    write(root / "y.txt", "boom")
    result = indexer.scan()["notes"]
    assert sorted(result.invalid) == ["x.txt", "y.txt"]
    assert rows()["x.txt"] == (False, "this note is bad", None)
    assert rows()["y.txt"][1] == "cannot be read: parser bug"
    assert kind.count() == (0, 2)
    write(root / "x.txt", "good note now")
    indexer.scan()
    assert rows()["x.txt"] == (True, None, "good note now")


def test_files_modified_within_the_settle_time_are_deferred(database, root):
    indexer, kind = make(database, root, settle_seconds=3600)
    write(root / "old.txt", "settled", mtime=time.time() - 7200)
    write(root / "fresh.txt", "maybe still being copied")
    result = indexer.scan()["notes"]
    assert result.added == ["old.txt"] and result.deferred == ["fresh.txt"]
    assert not indexer.idle()        # left to the watcher's settle logic


def test_temporary_names_are_never_indexed(database, root):
    indexer, kind = make(database, root)
    for name in (".hidden.txt", "copy.txt.part", "edit.txt~", ".note.txt.Xa91bQ", "x.tmp",
                 ".git/config.txt"):
        write(root / name, "temporary")
    assert indexer.scan()["notes"].added == []
    assert is_temporary("a/.b/c.sif") and is_temporary("c.sif.part")
    assert not is_temporary("compute/python_3.11.sif")


def test_listeners_and_after_scan_hear_about_changes_only(database, root):
    indexer, kind = make(database, root)
    heard = []
    indexer.add_listener(heard.append)
    indexer.add_listener(lambda result: 1 / 0)   # a failing listener harms nobody
    write(root / "a.txt", "alpha")
    indexer.scan()
    indexer.scan()
    assert [(r.kind, r.added) for r in heard] == [("notes", ["a.txt"])]
    assert len(kind.scans) == 1


def test_upserts_are_idempotent_across_indexers_sharing_a_database(database, root):
    first, kind_one = make(database, root)
    second, kind_two = make(database, root)
    write(root / "a.txt", "alpha")
    assert first.scan()["notes"].added == ["a.txt"]
    assert second.scan()["notes"].unchanged == 1   # already indexed by the other one
    entry_state = FileState.of(os.stat(root / "a.txt"))
    kind_two.store_many([Entry("a.txt", str(root / "a.txt"), entry_state, {"text": "again"})])
    kind_one.store_many([Entry("a.txt", str(root / "a.txt"), entry_state, {"text": "again"})])
    assert Note.select().count() == 1
    assert generation(database, "notes") >= 3


def test_the_watcher_indexes_a_dropped_file_and_a_moved_folder(database, root, tmp_path):
    indexer, kind = make(database, root, settle_seconds=0.2, watcher="inotify")
    indexer.start()
    try:
        write(root / "dropped.txt", "hello")
        outside = tmp_path / "staging"
        write(outside / "one.txt", "1")
        write(outside / "two.txt", "2")
        os.rename(outside, root / "moved")
        wait_for(lambda: set(rows()) == {"dropped.txt", "moved/one.txt", "moved/two.txt"}, timeout=30,
                 interval=0.05, message="the dropped file and the moved folder indexed", show=rows)
        os.rename(root / "moved", tmp_path / "gone")
        wait_for(lambda: set(rows()) == {"dropped.txt"}, timeout=30, interval=0.05,
                 message="the folder moved away removed", show=rows)
        assert indexer.health() == (True, "notes: inotify")
    finally:
        indexer.stop()


def test_missing_root_is_watched_once_it_appears(database, tmp_path):
    late = tmp_path / "late"
    indexer, kind = make(database, late, watcher="inotify")
    indexer.start()
    try:
        assert "folder missing" in indexer.health()[1]
        write(late / "a.txt", "alpha")
        wait_for(lambda: "a.txt" in rows(), timeout=30, interval=0.05, message="a.txt indexed", show=rows)
    finally:
        indexer.stop()


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /shared rw,relatime shared:20 - nfs4 head:/export rw,vers=4.2
41 40 0:51 / /shared/local\\040disk rw,relatime - xfs /dev/sdb1 rw
42 22 0:52 / /lustre rw - lustre 10.0.0.1@tcp:/fs rw
"""


def test_auto_mode_polls_on_network_filesystems(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert watcher.filesystem_type("/shared/apptainer/images", str(info)) == "nfs4"
    assert watcher.filesystem_type("/shared/local disk/images", str(info)) == "xfs"
    assert watcher.choose_mode("auto", "/shared/apptainer/images", str(info)) == "poll"
    assert watcher.choose_mode("auto", "/lustre/images", str(info)) == "poll"
    assert watcher.choose_mode("auto", "/srv/images", str(info)) == "inotify"
    assert watcher.choose_mode("inotify", "/shared/x", str(info)) == "inotify"
    assert watcher.choose_mode("poll", "/srv/x", str(info)) == "poll"


def test_a_vanished_root_keeps_the_index_and_is_watched_again(database, root, tmp_path):
    indexer, kind = make(database, root, settle_seconds=0.2, watcher="inotify", poll_interval=0.2)
    write(root / "a.txt", "alpha", mtime=time.time() - 100)
    indexer.start()
    try:
        wait_for(lambda: set(rows()) == {"a.txt"}, timeout=30, interval=0.05, message="a.txt indexed",
                 show=rows)
        os.rename(root, tmp_path / "unmounted")      # as an NFS outage looks to the daemon
        wait_for(lambda: "folder missing" in indexer.health()[1], timeout=30, interval=0.05,
                 message="the missing folder noticed", show=indexer.health)
        assert indexer.scan()["notes"].removed == []
        assert set(rows()) == {"a.txt"}
        os.rename(tmp_path / "unmounted", root)
        # Back: the watch is re-attached and new files are followed again.
        wait_for(lambda: "folder missing" not in indexer.health()[1], timeout=30, interval=0.05,
                 message="the folder watched again", show=indexer.health)
        write(root / "b.txt", "beta")
        wait_for(lambda: set(rows()) == {"a.txt", "b.txt"}, timeout=30, interval=0.05,
                 message="b.txt indexed", show=rows)
    finally:
        indexer.stop()


def test_a_file_name_that_is_not_utf8_is_skipped_not_fatal(database, root):
    indexer, kind = make(database, root)
    write(root / "good.txt", "fine")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.txt"), "w") as handle:
        handle.write("latin-1 name")
    result = indexer.scan()["notes"]
    assert result.added == ["good.txt"]
    assert set(rows()) == {"good.txt"}
