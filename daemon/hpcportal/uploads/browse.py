"""The file browser's query: filters, a name search and the sort orders of ``GET /api/v2/files``.

Names are matched and sorted on their case-folded key (``models.uploads.name_key``),
computed by Python when the file is stored: SQLite, MariaDB and PostgreSQL
would each fold (or not fold) case their own way, Korean and accented names
included, and the browser must answer alike whichever database a head uses.
"""

import peewee

from ..models.uploads import UploadedFile, name_key

# sort value -> the columns it orders by (then the file id, so pages never overlap).
SORTS = {
    "name": (UploadedFile.name_key, UploadedFile.filename),
    "size": (UploadedFile.size,),
    "time": (UploadedFile.created_at,),
}
# LIKE's escape character: one every backend takes without quoting rules of its own.
ESCAPE = "!"


def sort_names():
    """Every accepted ``sort`` value: a key, ascending, or with ``-`` descending."""
    return [*SORTS, *(f"-{key}" for key in SORTS)]


def _contains(field, text):
    needle = "".join(ESCAPE + ch if ch in (ESCAPE, "%", "_") else ch for ch in text)
    return peewee.NodeList((field, peewee.SQL("LIKE"), f"%{needle}%",
                            peewee.SQL(f"ESCAPE '{ESCAPE}'")))


def browse(query, *, job_id=None, file_type=None, q=None, sort="-time", limit=100, offset=0):
    """(rows, total) of ``query`` (a select of UploadedFile) filtered, sorted and cut to
    the page; ``sort`` must be one of ``sort_names()``."""
    if job_id:
        query = query.where(UploadedFile.job_id == job_id)
    if file_type:
        query = query.where(UploadedFile.file_type == file_type)
    if q:
        query = query.where(_contains(UploadedFile.name_key, name_key(q)))
    total = query.count()
    descending = sort.startswith("-")
    columns = [c.desc() if descending else c.asc() for c in (*SORTS[sort.lstrip("-")], UploadedFile.id)]
    rows = query.order_by(*columns).limit(limit).offset(offset)
    return list(rows), total
