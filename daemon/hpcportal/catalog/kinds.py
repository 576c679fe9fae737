"""What a catalog kind is: the interface the indexer drives, and the values
it hands a kind.

The indexer owns watching, settling and deciding whether a file changed; a
kind owns what a file means and where it is stored. ``index_store.ModelKind``
implements the storage half for a peewee model derived from
``models.catalog.IndexedFile``; images and templates derive from it.
"""

from dataclasses import dataclass, field
from typing import Protocol


class InvalidFile(Exception):
    """A file that cannot be used; the message is the reason shown to admins."""


@dataclass(frozen=True)
class FileState:
    """What change detection compares: a file whose state is unchanged is not read again."""

    size: int
    mtime_ns: int
    inode: int
    companion: str = ""

    @classmethod
    def of(cls, stat, companion=""):
        return cls(stat.st_size, stat.st_mtime_ns, stat.st_ino, companion)


@dataclass
class Entry:
    relpath: str
    path: str
    state: FileState
    document: dict = None
    error: str = None

    @property
    def valid(self):
        return self.error is None


@dataclass
class ScanResult:
    kind: str
    added: list = field(default_factory=list)
    updated: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    # Relpaths newly stored as invalid in this batch (a subset of added/updated).
    invalid: list = field(default_factory=list)
    # Files seen still changing: left for the watcher to index once settled.
    deferred: list = field(default_factory=list)
    unchanged: int = 0
    duration_ms: int = 0

    @property
    def changed(self):
        return bool(self.added or self.updated or self.removed)

    def counts(self):
        return {"added": len(self.added), "updated": len(self.updated),
                "removed": len(self.removed), "invalid": len(self.invalid),
                "deferred": len(self.deferred), "unchanged": self.unchanged,
                "duration_ms": self.duration_ms}


class CatalogKind(Protocol):
    """One catalog: a folder the indexer keeps an index of.

    Relpaths are relative to ``root`` with "/" separators (e.g.
    "compute/python_3.11.sif"). Temporary names (a component starting with
    ".", "*.tmp", "*.part", "*~") never reach a kind.
    """

    # Short unique name ("images", "templates"): log lines, metric labels,
    # ``Indexer.scan(["images"])`` and the ``hpcportald scan --images`` flag.
    name: str
    # Absolute folder, watched recursively. It may not exist yet: the indexer
    # then retries and treats it as empty.
    root: str

    def accepts(self, relpath: str) -> bool:
        """Whether a file is part of this catalog."""

    def owner_of(self, relpath: str) -> str | None:
        """For a companion file (an image's "x.sif.yaml" sidecar): the relpath
        of the indexed file that a change to it must refresh; else None."""

    def companion_state(self, path: str) -> str:
        """A short fingerprint (<= 255 chars) of the companions of the file at
        ``path``, "" when there are none; part of change detection."""

    def parse(self, path: str, relpath: str) -> dict:
        """The file's document (JSON-able). Raise ``InvalidFile(reason)`` when
        it cannot be used: it is then kept in the index as invalid with that
        reason (any other exception likewise, with its message). Runs in the
        indexer's thread or the one calling ``scan``; must not write the database."""

    def known(self) -> dict[str, FileState]:
        """What the index holds now, by relpath."""

    def state_of(self, relpath: str) -> FileState | None:
        """One entry's stored state."""

    def store_many(self, entries: list[Entry]) -> None:
        """Upsert entries in one transaction (``entry.document`` is None when
        ``entry.error`` is set). Idempotent and keyed by the path, so that
        several daemons indexing one folder into one database never duplicate rows."""

    def remove(self, relpaths: list[str]) -> None:
        """Delete those entries; idempotent."""

    def count(self) -> tuple[int, int]:
        """(valid, invalid) entries in the index."""

    def after_scan(self, result: ScanResult) -> None:
        """Called after every batch that changed this kind."""
