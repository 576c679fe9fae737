"""A catalog kind's index in the database: upserts keyed by path hash, and a
generation per kind bumped with every change (so every daemon notices)."""

import peewee

from ..models.base import path_hash, utcnow
from ..models.catalog import CatalogGeneration
from .kinds import FileState


class ModelKind:
    """The storage half of a ``kinds.CatalogKind``, for a peewee model derived
    from ``IndexedFile``.

    Subclasses set ``name``, ``root``, ``model`` and implement ``accepts``,
    ``parse`` and ``columns(entry) -> dict`` (their own columns for a stored
    entry; ``entry.document`` is None for invalid files).
    """

    name = None
    root = None
    model = None

    def __init__(self, database):
        self._database = database

    def owner_of(self, relpath):
        return None

    def companion_state(self, path):
        return ""

    def columns(self, entry):
        return {}

    def after_scan(self, result):
        pass

    def known(self):
        m = self.model
        query = m.select(m.relpath, m.size, m.mtime_ns, m.inode, m.companion).tuples()
        return {relpath: FileState(size, mtime_ns, inode, companion or "")
                for relpath, size, mtime_ns, inode, companion in query}

    def state_of(self, relpath):
        m = self.model
        query = (m.select(m.size, m.mtime_ns, m.inode, m.companion)
                 .where(m.path_hash == path_hash(relpath)).tuples())
        row = query.first()
        return FileState(row[0], row[1], row[2], row[3] or "") if row else None

    def _row(self, entry, now):
        return {
            "path_hash": path_hash(entry.relpath),
            "relpath": entry.relpath,
            "path": entry.path,
            "size": entry.state.size,
            "mtime_ns": entry.state.mtime_ns,
            "inode": entry.state.inode,
            "companion": entry.state.companion,
            "valid": entry.valid,
            "error": entry.error,
            "indexed_at": now,
            **self.columns(entry),
        }

    def store_many(self, entries):
        """Upsert several entries in one statement and one transaction."""
        if not entries:
            return
        now = utcnow()
        # One statement per set of columns: columns() may differ for invalid files.
        groups = {}
        for entry in entries:
            row = self._row(entry, now)
            groups.setdefault(tuple(row), []).append(row)
        m = self.model
        with self._database.atomic():
            for keys, rows in groups.items():
                columns = [getattr(m, key) for key in keys if key != "path_hash"]
                upsert_many(self._database, m, rows, m.path_hash, columns)
            bump_generation(self._database, self.name)

    def remove(self, relpaths):
        relpaths = list(relpaths)
        if not relpaths:
            return
        m = self.model
        hashes = [path_hash(r) for r in relpaths]
        with self._database.atomic():
            for start in range(0, len(hashes), 500):
                m.delete().where(m.path_hash.in_(hashes[start:start + 500])).execute()
            bump_generation(self._database, self.name)

    def count(self):
        """(valid, invalid) entries in the index."""
        m = self.model
        rows = m.select(m.valid, peewee.fn.COUNT(m.id)).group_by(m.valid).tuples()
        counts = {bool(valid): number for valid, number in rows}
        return counts.get(True, 0), counts.get(False, 0)


def upsert_many(database, model, rows, key_field, columns):
    """INSERT ... ON CONFLICT (key) DO UPDATE SET col = EXCLUDED.col for many rows."""
    query = model.insert_many(rows)
    if isinstance(database, peewee.MySQLDatabase):
        query = query.on_conflict(preserve=columns)
    else:
        query = query.on_conflict(conflict_target=[key_field], preserve=columns)
    query.execute()


def bump_generation(database, kind):
    G = CatalogGeneration
    updated = G.update(generation=G.generation + 1).where(G.kind == kind).execute()
    if not updated:
        # The first change of this kind; another daemon may insert it at the same time.
        query = G.insert({"kind": kind, "generation": 1})
        update = {G.generation: G.generation + 1}
        if isinstance(database, peewee.MySQLDatabase):
            query = query.on_conflict(update=update)
        else:
            query = query.on_conflict(conflict_target=[G.kind], update=update)
        query.execute()


def generation(database, kind):
    G = CatalogGeneration
    row = G.select(G.generation).where(G.kind == kind).tuples().first()
    return row[0] if row else 0
