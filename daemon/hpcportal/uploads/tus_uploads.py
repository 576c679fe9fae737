"""tus 1.0.0 on the upload rows: the offset, appending at it, and the
completion that follows the last byte (also when its request died).

Header values are parsed in ``uploads.tus``; HTTP is in ``resources.uploads``.
"""

import datetime
import logging
import os
from dataclasses import dataclass

from ..errors import Conflict, NotFound, PayloadTooLarge, TusChecksumMismatch, ValidationError
from ..models.base import utc_at
from ..models.uploads import Upload
from .files_api import serialize_file
from .storage import Truncated

log = logging.getLogger(__name__)

# A complete tus upload this long untouched has no request left finishing it.
STRANDED_AFTER = 60


@dataclass(frozen=True)
class TusState:
    offset: int
    length: int
    metadata: dict = None
    expires_at: datetime.datetime = None  # None once complete
    file: dict = None                     # the finished file, once complete


class TusUploads:
    """Mixed into ``Uploads``: the tus half of it, on the same rows, partial
    files, running hashes and completion leases as the chunk protocol."""

    def _tus_row(self, user, upload_id):
        row = self._upload(user, upload_id)
        if row.protocol != "tus":
            raise NotFound(f"There is no tus upload {upload_id!r}.", code="upload_not_found")
        return row

    def tus_state(self, user, upload_id):
        """Where a tus upload is, also once it has become a file."""
        done = self.files.completed(user.name, upload_id)
        if done is not None:
            return TusState(done.size, done.size, file=serialize_file(done))
        row = self._tus_row(user, upload_id)
        return TusState(row.tus_offset, row.size, row.metadata, row.expires_at)

    def tus_append(self, user, upload_id, offset, stream, content_length=None, checksum=None):
        """Append at ``offset``; returns (new offset, file or None).

        ``checksum`` is (hashlib object, expected digest). The partial file is
        locked while one PATCH writes, and the offset moves by compare-and-set,
        so two PATCHes at the same offset (two heads) cannot both succeed.
        """
        done = self.files.completed(user.name, upload_id)
        if done is not None:
            if offset == done.size and not content_length:
                return done.size, serialize_file(done)
            raise Conflict(f"Upload-Offset must be {done.size}; the upload is complete.",
                           code="offset_mismatch", headers={"Upload-Offset": str(done.size)})
        row = self._tus_row(user, upload_id)
        self._check_offset(row, offset)
        room = row.size - offset
        if content_length is not None and content_length > room:
            raise PayloadTooLarge(
                f"The body has {content_length} bytes but only {room} remain of Upload-Length.",
                code="exceeds_upload_length")
        fd = self._open_partial(row)
        try:
            self._storage.lock_for_append(fd)
            row = self._upload(user, upload_id)
            self._check_offset(row, offset)
            if row.state != "active":
                raise Conflict("This upload is being completed.", code="upload_completing")
            self._touch(row.id)
            written = self._write_body(fd, offset, stream, content_length, room, checksum)
            # MySQL counts changed (not matched) rows: an empty PATCH changes nothing.
            moved = written == 0 or (
                Upload.update(tus_offset=offset + written, updated_at=self._now())
                .where((Upload.id == row.id) & (Upload.tus_offset == offset)).execute())
            if not moved:
                raise Conflict("Another request moved this upload's offset meanwhile.",
                               code="offset_mismatch")
        finally:
            os.close(fd)  # also releases the lock
        new_offset = offset + written
        self._hashes.tus_committed(row, new_offset, started=offset == 0)
        if new_offset < row.size:
            return new_offset, None
        row = self._upload(user, upload_id)
        with self._leases.completion(row) as claim:
            return new_offset, self._finish(row, claim)

    def _write_body(self, fd, offset, stream, content_length, room, checksum):
        """Write the PATCH body at ``offset``; the number of bytes written."""
        try:
            written = self._storage.write_at(fd, offset, stream, content_length if
                                             content_length is not None else room,
                                             [checksum[0]] if checksum else (),
                                             exact=content_length is not None)
        except Truncated as exc:
            raise ValidationError(
                f"The body ended after {exc.args[0]} of {content_length} bytes; nothing was recorded.",
                code="truncated_body") from None
        self._metrics.bytes_received.labels("tus").inc(written)
        if content_length is None and stream.read(1):
            raise PayloadTooLarge(f"The body is larger than the {room} bytes that remain.",
                                  code="exceeds_upload_length")
        if checksum and checksum[0].digest() != checksum[1]:
            self._metrics.failed.labels("chunk_checksum").inc()
            raise TusChecksumMismatch(
                f"The body does not match its Upload-Checksum ({checksum[0].name}); "
                f"nothing was recorded, Upload-Offset stays {offset}.")
        return written

    def finish_stranded_tus(self):
        """Turn into files the tus uploads whose last byte was acknowledged but
        whose completion never ended (the head died, the database went away):
        their client saw Upload-Offset reach Upload-Length and will not ask
        again. Returns how many became files."""
        quiet_since = utc_at(self._clock() - STRANDED_AFTER)
        now = self._now()
        stranded = Upload.select().where(
            (Upload.protocol == "tus") & (Upload.tus_offset == Upload.size)
            & (Upload.updated_at < quiet_since)
            & ((Upload.state == "active") | (Upload.lease_until < now)))
        count = 0
        failures = {}  # only this pass's: uploads gone since are forgotten
        for row in list(stranded):
            try:
                completion = self._leases.completion(row)
            except (Conflict, NotFound):
                continue  # another head is on it
            try:
                with completion as claim:
                    self._finish(row, claim)
                count += 1
            except Exception as exc:
                failures[row.id] = reason = str(exc) or type(exc).__name__
                if self._stranded_failures.get(row.id) != reason:  # once, not every pass
                    log.warning("upload %s of %s: finishing its completion failed: %s",
                                row.id, row.user, reason)
        self._stranded_failures = failures
        return count

    def _check_offset(self, row, offset):
        if offset != row.tus_offset:
            raise Conflict(f"Upload-Offset is {offset} but the upload is at {row.tus_offset}.",
                           code="offset_mismatch", headers={"Upload-Offset": str(row.tus_offset)})

    def tus_terminate(self, user, upload_id):
        if self.files.completed(user.name, upload_id) is not None:
            raise Conflict("This upload is complete; delete the file instead.", code="upload_complete")
        self.cancel(user, upload_id)
