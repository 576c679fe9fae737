"""Completion leases: which request (on which head) is turning an upload into a file.

A completion marks the upload row "completing" with a lease that runs out, so
a head that dies mid-completion does not block the upload for ever: once the
lease has run out another request takes it over. While the data is hashed the
lease is renewed.
"""

import logging
import uuid

from ..errors import Conflict, NotFound
from ..models.base import utc_at
from ..models.uploads import Upload

log = logging.getLogger(__name__)

# A completion holds the upload for this long, renewed while it hashes; a
# head that died mid-completion is taken over once the lease has run out.
COMPLETION_LEASE = 120
LEASE_RENEW_BYTES = 256 * 1024 * 1024


class Completion:
    """A claimed lease on one upload. As a context manager it gives the lease
    back when the block fails; on success the upload row is gone with it."""

    def __init__(self, leases, row):
        self._leases = leases
        self._row = row
        self._renew_at = LEASE_RENEW_BYTES

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None:
            self._leases.release(self._row)
        return False

    def progress(self, done):
        """``done`` bytes hashed so far: renews the lease every LEASE_RENEW_BYTES."""
        if done >= self._renew_at:
            self._renew_at = done + LEASE_RENEW_BYTES
            self._leases.renew(self._row)


class CompletionLeases:
    def __init__(self, clock, listener=None):
        """``listener`` ("<host>/<address>:<port>", or None when the port is
        not fixed) names this daemon's listening socket: only one process can
        hold it at a time, so leases held under it by another process are
        left over from a predecessor that died."""
        self._clock = clock
        self._listener = listener
        self._holder = f"{listener or 'unnamed'}#{uuid.uuid4().hex[:12]}"

    def completion(self, row):
        """Claim ``row`` for a completion: ``with leases.completion(row) as claim:``.
        409 while another request holds it, 404 when it is gone."""
        now = utc_at(self._clock())
        claimed = (Upload.update(state="completing", lease_until=utc_at(self._clock() + COMPLETION_LEASE),
                                 lease_holder=self._holder)
                   .where((Upload.id == row.id)
                          & ((Upload.state == "active")
                             | ((Upload.state == "completing") & (Upload.lease_until < now))))
                   .execute())
        if not claimed:
            if Upload.get_or_none(Upload.id == row.id) is None:
                raise NotFound(f"There is no upload {row.id!r}.", code="upload_not_found")
            raise Conflict("This upload is being completed by another request.",
                           code="upload_completing", headers={"Retry-After": "5"})
        return Completion(self, row)

    def renew(self, row):
        Upload.update(lease_until=utc_at(self._clock() + COMPLETION_LEASE)).where(
            Upload.id == row.id).execute()

    def release(self, row):
        Upload.update(state="active", lease_until=None, lease_holder=None).where(
            (Upload.id == row.id) & (Upload.state == "completing")
            & (Upload.lease_holder == self._holder)).execute()

    def release_abandoned(self):
        """Free the completions a killed predecessor on this listener left
        half-done, so they can be completed at once rather than after the
        lease runs out; returns how many. Call once listening (which proves
        the predecessor gone)."""
        if not self._listener:
            return 0
        count = 0
        for row in Upload.select(Upload.id, Upload.lease_holder).where(Upload.state == "completing"):
            holder = row.lease_holder or ""
            if holder.rpartition("#")[0] != self._listener or holder == self._holder:
                continue
            count += (Upload.update(state="active", lease_until=None, lease_holder=None)
                      .where((Upload.id == row.id) & (Upload.state == "completing")
                             & (Upload.lease_holder == holder)).execute())
            log.info("upload %s: released the completion lease of a previous run (%s)",
                     row.id, holder)
        return count
