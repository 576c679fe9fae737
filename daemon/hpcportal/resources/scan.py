"""POST .../scan for a catalog kind (images, templates): an administrator's rescan now."""

from .base import require_admin


class ScanResource:
    def __init__(self, indexer, kind, rate_limits):
        self._indexer = indexer
        self._kind = kind
        self._rate_limits = rate_limits

    def on_post(self, req, resp):
        require_admin(req)
        self._rate_limits.check(req.context.user, "scan")
        counts = self._indexer.scan([self._kind.name])[self._kind.name].counts()
        _, invalid = self._kind.count()
        req.context.audit_target = self._kind.root
        req.context.audit_detail = counts
        resp.media = {"success": True, "added": counts["added"], "updated": counts["updated"],
                      "removed": counts["removed"], "invalid": invalid,
                      "deferred": counts["deferred"], "unchanged": counts["unchanged"],
                      "duration_ms": counts["duration_ms"]}
