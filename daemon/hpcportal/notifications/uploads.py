"""Upload events: upload.completed, upload.expired and quota.warning for the upload's owner.

``observe`` is the uploads' observer: a completion is recorded in the transaction
that publishes the file; an expiry right after the conditional delete that only
one head wins. A user above 80 % of ``uploads.user_quota`` is warned at most once a day.
"""

import datetime

from ..models.base import utcnow
from ..models.notifications import NotificationEvent

QUOTA_WARNING = 0.8


def _size(amount):
    for unit, power in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if amount >= 1024 ** power:
            return f"{amount / 1024 ** power:.1f} {unit}"
    return f"{amount} bytes"


class UploadEvents:
    def __init__(self, store, *, quota, used_bytes, clock=utcnow):
        """``used_bytes(user)``: what the user stores and has reserved (the quota's measure)."""
        self._store = store
        self._quota = quota
        self._used_bytes = used_bytes
        self._clock = clock

    def observe(self, what, row, file=None):
        """``what``: "completed" (with the published file's answer) or "expired"; ``row`` the upload."""
        if what == "completed":
            name = (file or {}).get("filename") or row.filename
            self._store.record(
                row.user, "upload.completed", key=f"upload:{row.id}:completed",
                title=f"Upload of {name} completed",
                message=f"{name} ({_size(row.size)}) is uploaded and checked"
                        + (f"; it belongs to job {row.job_id}." if row.job_id else "."),
                data={"uploadId": row.id, "fileId": (file or {}).get("file_id"), "file": name,
                      "size": row.size, "jobId": row.job_id})
            self.check_quota(row.user)
        elif what == "expired":
            self._store.record(
                row.user, "upload.expired", key=f"upload:{row.id}:expired",
                title=f"Upload of {row.filename} expired",
                message=f"The unfinished upload of {row.filename} ({_size(row.size)}) had no activity for too "
                        "long and was removed; upload the file again.",
                data={"uploadId": row.id, "file": row.filename, "size": row.size, "jobId": row.job_id})

    def check_quota(self, user):
        if not self._quota:
            return
        used = self._used_bytes(user)
        if used < QUOTA_WARNING * self._quota:
            return
        day = self._clock().date()
        since = datetime.datetime.combine(day, datetime.time()) - datetime.timedelta(days=1)
        recent = NotificationEvent.select().where(
            (NotificationEvent.user == user) & (NotificationEvent.type == "quota.warning")
            & (NotificationEvent.created_at > since)).exists()
        if recent:
            return
        share = round(100 * used / self._quota)
        self._store.record(
            user, "quota.warning", key=f"quota:{user}:{day.isoformat()}",
            title=f"Your uploads use {share} % of your quota",
            message=f"Your uploads use {_size(used)} of your {_size(self._quota)} quota ({share} %); "
                    "delete files you no longer need before new uploads are refused.",
            data={"used": used, "quota": self._quota, "percent": share})
