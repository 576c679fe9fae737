"""template.invalid: a template in a user's own folder (``users/<name>/...``) became invalid.

The catalog's indexer stores every template file, valid or not; this pass (run
by the delivery worker) records one event per invalid version of a user's file,
keyed by the file and its modification time, so each head may run it.
"""

from ..models.notifications import NotificationEvent
from ..models.templates import Template


class TemplateEvents:
    def __init__(self, store):
        self._store = store

    def check_invalid(self):
        rows = list(Template.select(Template.relpath, Template.path_hash, Template.mtime_ns, Template.error)
                    .where((Template.valid == False) & Template.relpath.startswith("users/"))  # noqa: E712
                    .limit(500))
        keys = {f"template:{row.path_hash}:{row.mtime_ns}": row for row in rows}
        if not keys:
            return
        known = {e.key for e in NotificationEvent.select(NotificationEvent.key)
                 .where(NotificationEvent.key << list(keys))}
        for key, row in keys.items():
            parts = row.relpath.split("/")
            if key in known or len(parts) < 3:
                continue
            where = "/".join(parts[2:])
            problems = (row.error or "it cannot be read").strip()
            self._store.record(
                parts[1], "template.invalid", key=key, title=f"Your template {where} is invalid",
                message=f"Your template {where} cannot be used: {problems[:1000]}",
                data={"template": where, "problems": problems[:4000]})
