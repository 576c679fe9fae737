"""The uploads domain: starting, receiving, completing and cancelling uploads.
No HTTP here; see ``hpcportal.resources.uploads``. The tus half is in
``tus_uploads``, the finished files in ``files_api``, running hashes in
``hashing`` and completion leases in ``leases``.

Every call takes the caller (``hpcportal.auth.User``) and only ever finds
that user's rows: another user's ids are simply unknown (NotFound).
Nothing is acknowledged before its bytes are fsynced into the partial file
on the shared filesystem and its row is committed, so any head node can
carry on an upload another one started, also after a crash.
"""

import hashlib
import logging
import os
import re
import time
import uuid

import peewee

from ..errors import Conflict, NotFound, PayloadTooLarge, Unprocessable, ValidationError
from ..models.base import isoformat, path_hash, utc_at
from ..models.uploads import Upload, UploadChunk, UploadedFile, name_key
from .classify import SAMPLE_BYTES
from .files_api import Files, serialize_file
from .hashing import RunningHashes
from .leases import CompletionLeases
from .names import clean_filename, clean_job_id
from .storage import Truncated
from .tus_uploads import TusUploads

log = logging.getLogger(__name__)

SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
# How long a completion waits for this process to finish hashing ahead; past
# that it reads back what is not hashed yet. Well inside leases.COMPLETION_LEASE,
# which is only renewed once the completion itself hashes.
HASH_WAIT = 30


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class Uploads(TusUploads):
    """The one object the resources and other areas are given: uploads of
    either protocol, and (through ``Files``) the finished files. See the
    package docstring for the functions other areas use."""

    def __init__(self, settings, database, storage, classifier, metrics, reservations, sharing,
                 clock=time.time, listener=None, observers=()):
        """``listener`` names this daemon's socket; see ``CompletionLeases``. ``sharing``:
        a ``sharing.Sharing`` on the same storage. ``observers``: called as
        ``observer("completed", upload row, file answer)`` in the transaction that
        publishes a file, and ``observer("expired", upload row)`` once an expired upload is removed."""
        self._observers = tuple(observers)
        self._settings = settings
        self._database = database
        self._storage = storage
        self._reservations = reservations
        self._classifier = classifier
        self._metrics = metrics
        self._clock = clock
        self._hashes = RunningHashes(storage, self._open_partial, self.chunk_span)
        self._leases = CompletionLeases(clock, listener)
        self._stranded_failures = {}  # upload id -> why finishing it failed last time
        self.files = Files(settings, storage, metrics, clock, sharing)

    @property
    def settings(self):
        return self._settings

    def _now(self):
        return utc_at(self._clock())

    def _expiry(self):
        return utc_at(self._clock() + self._settings.expire_after)

    # -- starting ------------------------------------------------------------

    def agreed_chunk_size(self, requested):
        s = self._settings
        if _is_int(requested) and s.min_chunk_size <= requested <= s.max_chunk_size:
            return requested
        return s.chunk_size

    def start(self, user, filename, size, job_id=None, sha256=None, chunk_size=None,
              protocol="chunk", metadata=None):
        """A new upload row and its empty partial file. Checks, in this order:
        the fields (400), the size limit (413), the user's quota (413) and
        number of unfinished uploads (429), free space (507)."""
        problems = {}

        def check(field, fn):
            try:
                return fn()
            except ValidationError as exc:
                problems.update(exc.errors or {field: exc.message})
                return None

        name = check("filename", lambda: clean_filename(filename))
        job = check("job_id", lambda: clean_job_id(job_id))
        if not _is_int(size):
            problems["size"] = "must be an integer number of bytes"
        elif size < 0:
            problems["size"] = "must not be negative"
        if sha256 is not None and (not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256)):
            problems["sha256"] = "must be 64 hexadecimal digits"
        if chunk_size is not None and not _is_int(chunk_size):
            problems["chunk_size"] = "must be an integer number of bytes"
        if problems:
            detail = "; ".join(f"{field} {reason}" for field, reason in problems.items())
            raise ValidationError(f"The upload cannot start: {detail}.", errors=problems)

        s = self._settings
        if size > s.max_size:
            raise PayloadTooLarge(
                f"The file is {size} bytes; the largest upload allowed is {s.max_size} bytes.",
                code="file_too_large", extra={"max_size": s.max_size})

        agreed = self.agreed_chunk_size(chunk_size) if protocol == "chunk" else 0
        total = (size + agreed - 1) // agreed if agreed else 0
        upload_id = uuid.uuid4().hex
        self._storage.create_partial(user.name, (user.uid, user.gid), upload_id)
        now = self._now()

        def insert():
            return Upload.create(
                id=upload_id, user=user.name, uid=user.uid, gid=user.gid, protocol=protocol,
                filename=name, job_id=job, size=size, chunk_size=agreed, total_chunks=total,
                sha256=sha256.lower() if sha256 else None, metadata=metadata,
                created_at=now, updated_at=now, expires_at=self._expiry())

        try:
            row = self._reservations.reserve(user, size, insert)
        except BaseException:
            self._storage.remove_partial(user.name, upload_id)
            raise
        self._metrics.started.labels(protocol).inc()
        log.info("upload %s started by %s: %r, %d bytes, %s", upload_id, user.name, name, size, protocol)
        return row

    # -- looking up ----------------------------------------------------------

    def _upload(self, user, upload_id):
        if not isinstance(upload_id, str) or not upload_id:
            raise ValidationError("upload_id is required.", errors={"upload_id": "required"})
        row = Upload.get_or_none((Upload.id == upload_id) & (Upload.user == user.name))
        if row is None:
            raise NotFound(f"There is no upload {upload_id!r}.", code="upload_not_found")
        return row

    def _open_partial(self, row, write=True):
        published = (row.job_id, row.final_name) if row.final_name else None
        return self._storage.open_partial(row.user, (row.uid, row.gid), row.id, write=write,
                                          published=published)

    def _received(self, upload_id):
        """Indexes of the recorded chunks, in order. Read through the cursor:
        an upload of 50 GB in 5 MiB chunks has 10,000 of them, and each chunk
        answer lists them all."""
        query = (UploadChunk.select(UploadChunk.chunk_index)
                 .where(UploadChunk.upload == upload_id).order_by(UploadChunk.chunk_index))
        sql, params = query.sql()
        return [index for (index,) in self._database.execute_sql(sql, params).fetchall()]

    @staticmethod
    def _received_bytes(row, received):
        if row.protocol == "tus":
            return row.tus_offset
        # Every chunk but the last has chunk_size bytes; ``received`` is sorted.
        last = row.total_chunks - 1
        if received and received[-1] == last:
            return (len(received) - 1) * row.chunk_size + row.size - last * row.chunk_size
        return len(received) * row.chunk_size

    def serialize_upload(self, row, received=None):
        received = self._received(row.id) if received is None else received
        return {
            "upload_id": row.id,
            "filename": row.filename,
            "size": row.size,
            "job_id": row.job_id,
            "chunk_size": row.chunk_size,
            "total_chunks": row.total_chunks,
            "received_chunks": received,
            "received_bytes": self._received_bytes(row, received),
            "expires_at": isoformat(row.expires_at),
        }

    def status(self, user, upload_id):
        return self.serialize_upload(self._upload(user, upload_id))

    def _touch(self, upload_id):
        now = self._now()
        Upload.update(updated_at=now, expires_at=self._expiry()).where(Upload.id == upload_id).execute()

    # -- the chunk protocol --------------------------------------------------

    def chunk_span(self, row, index):
        """(offset, length) of chunk ``index``; 400 when out of range."""
        if not _is_int(index) or not 0 <= index < row.total_chunks:
            raise ValidationError(
                f"chunk_index must be between 0 and {row.total_chunks - 1} for this upload.",
                errors={"chunk_index": "out of range"})
        offset = index * row.chunk_size
        return offset, min(row.chunk_size, row.size - offset)

    def receive_chunk(self, user, upload_id, index, stream, content_length=None, chunk_sha256=None):
        """Write chunk ``index`` from ``stream`` and record it. A re-sent chunk
        is first un-recorded, so a re-send that fails leaves it missing (and
        the client re-sends it) rather than acknowledged with mixed bytes."""
        row = self._upload(user, upload_id)
        if row.protocol != "chunk":
            raise Conflict("This upload uses the tus protocol; continue it with tus.",
                           code="wrong_protocol")
        if row.state != "active":
            raise Conflict("This upload is being completed; it takes no more chunks.",
                           code="upload_completing")
        offset, expected = self.chunk_span(row, index)
        if content_length is not None and content_length != expected:
            self._metrics.failed.labels("chunk_size").inc()
            raise ValidationError(
                f"Chunk {index} must be exactly {expected} bytes; the request declares {content_length}.",
                errors={"chunk": f"must be {expected} bytes"})
        if chunk_sha256 is not None and not SHA256_PATTERN.fullmatch(chunk_sha256):
            raise ValidationError("chunk_sha256 must be 64 hexadecimal digits.",
                                  errors={"chunk_sha256": "must be 64 hexadecimal digits"})
        self._hashes.forget_chunk(row.id, index)
        this_chunk = (UploadChunk.upload == row.id) & (UploadChunk.chunk_index == index)
        if UploadChunk.select().where(this_chunk).exists():  # a re-send; else no commit (WAL fsync) here
            UploadChunk.delete().where(this_chunk).execute()
        digest = hashlib.sha256() if chunk_sha256 else None
        fd = self._open_partial(row)
        try:
            try:
                written = self._storage.write_at(fd, offset, stream, expected,
                                                 [digest] if digest else ())
            except Truncated as exc:
                self._metrics.failed.labels("chunk_size").inc()
                raise ValidationError(
                    f"Chunk {index} has {exc.args[0]} bytes; it must be exactly {expected} bytes. "
                    "It was not recorded; send it again.",
                    errors={"chunk": f"must be {expected} bytes"}) from None
            self._metrics.bytes_received.labels("chunk").inc(written)
            if stream.read(1):
                self._metrics.failed.labels("chunk_size").inc()
                raise ValidationError(
                    f"Chunk {index} is larger than {expected} bytes. It was not recorded.",
                    errors={"chunk": f"must be {expected} bytes"})
            if digest and digest.hexdigest() != chunk_sha256.lower():
                self._metrics.failed.labels("chunk_checksum").inc()
                raise ValidationError(
                    f"Chunk {index} does not match its chunk_sha256 (received data has "
                    f"{digest.hexdigest()}). It was not recorded; send it again.",
                    code="checksum_mismatch", errors={"chunk_sha256": "does not match the data"})
            try:
                # No INSERT IGNORE: on MariaDB it would also swallow the foreign-key
                # error of an upload cancelled meanwhile and acknowledge the chunk.
                with self._database.atomic():  # touch first: its row lock comes before the insert's
                    self._touch(row.id)
                    UploadChunk.insert(upload=row.id, chunk_index=index, size=expected,
                                       token=os.urandom(8).hex(), received_at=self._now()).execute()
            except peewee.IntegrityError:
                if not Upload.select().where(Upload.id == row.id).exists():  # cancelled or expired
                    raise NotFound(f"There is no upload {upload_id!r}.", code="upload_not_found") from None
                # The same chunk arrived twice at once (e.g. at two heads): one row, same bytes.
        finally:
            os.close(fd)
        self._hashes.chunk_recorded(row, started=index == 0)
        received = self._received(row.id)
        return {"upload_id": row.id, "chunk_index": index,
                "received_bytes": self._received_bytes(row, received), "received_chunks": received}

    def verify_chunk(self, user, upload_id, index, chunk_sha256):
        """Check an already written chunk against a checksum that arrived after
        it; a mismatch un-records the chunk (400)."""
        if not isinstance(chunk_sha256, str) or not SHA256_PATTERN.fullmatch(chunk_sha256):
            raise ValidationError("chunk_sha256 must be 64 hexadecimal digits.",
                                  errors={"chunk_sha256": "must be 64 hexadecimal digits"})
        row = self._upload(user, upload_id)
        offset, length = self.chunk_span(row, index)
        fd = self._open_partial(row, write=False)
        try:
            digest = hashlib.sha256()
            self._storage.hash_range(fd, digest, offset, offset + length)
        finally:
            os.close(fd)
        if digest.hexdigest() != chunk_sha256.lower():
            UploadChunk.delete().where((UploadChunk.upload == row.id)
                                       & (UploadChunk.chunk_index == index)).execute()
            self._metrics.failed.labels("chunk_checksum").inc()
            raise ValidationError(
                f"Chunk {index} does not match its chunk_sha256. It was not recorded; send it again.",
                code="checksum_mismatch", errors={"chunk_sha256": "does not match the data"})

    def complete(self, user, upload_id):
        """The finished file; 409 naming missing chunks; 422 on a sha256 mismatch.
        Completing an upload that is already complete answers its file again."""
        if not isinstance(upload_id, str) or not upload_id:
            raise ValidationError("upload_id is required.", errors={"upload_id": "required"})
        done = self.files.completed(user.name, upload_id)
        if done is not None:
            return serialize_file(done)
        row = self._upload(user, upload_id)
        if row.protocol != "chunk":
            raise Conflict("A tus upload completes by itself when its last byte arrives.",
                           code="wrong_protocol")
        with self._leases.completion(row) as claim:
            received = set(self._received(row.id))
            missing = [i for i in range(row.total_chunks) if i not in received]
            if missing:
                raise Conflict(
                    f"The upload is missing {len(missing)} of {row.total_chunks} chunks.",
                    code="missing_chunks", extra={"missing_chunks": missing})
            return self._finish(row, claim)

    def release_abandoned_leases(self):
        """See ``CompletionLeases.release_abandoned``."""
        return self._leases.release_abandoned()

    def _finish(self, row, claim):
        """Hash, check, classify and publish the data of a claimed upload; the file."""
        owner = (row.uid, row.gid)
        fd = self._open_partial(row, write=False)
        try:
            on_disk = os.fstat(fd).st_size
            if on_disk != row.size:
                raise Conflict(f"The partial file holds {on_disk} bytes, expected {row.size}.",
                               code="size_mismatch")
            self._hashes.wait(row.id, HASH_WAIT)
            digest, start = self._hashes.start_of(row)
            end = self._storage.hash_range(fd, digest, start, on_progress=claim.progress)
            self._metrics.reread_bytes.inc(end - start)
            sha256 = digest.hexdigest()
            sample = self._storage.head(fd, SAMPLE_BYTES)
        finally:
            os.close(fd)
        if row.sha256 and sha256 != row.sha256:
            self._metrics.failed.labels("file_checksum").inc()
            raise Unprocessable(
                f"The uploaded data's sha256 is {sha256}, not {row.sha256} as declared. "
                "The upload is kept: re-send the chunks that differ, then complete again.",
                code="checksum_mismatch", extra={"expected_sha256": row.sha256, "sha256": sha256})
        file_type, mime_type = self._classifier.classify(sample, row.filename)

        def remember(candidate):
            Upload.update(final_name=candidate).where(Upload.id == row.id).execute()

        name = self._storage.publish(row.user, owner, row.id, row.job_id, row.filename,
                                     previous=row.final_name, before_link=remember)
        storage_path = self._storage.final_path(row.user, row.job_id, name)
        key = path_hash(os.path.normpath(storage_path))
        with self._database.atomic():
            UploadedFile.delete().where(UploadedFile.storage_path_hash == key).execute()
            created = UploadedFile.create(
                id=uuid.uuid4().hex, upload_id=row.id, user=row.user, filename=name, name_key=name_key(name),
                job_id=row.job_id, size=row.size, sha256=sha256, file_type=file_type,
                mime_type=mime_type[:255], storage_path=storage_path,
                storage_path_hash=key, created_at=self._now())
            UploadChunk.delete().where(UploadChunk.upload == row.id).execute()
            Upload.delete().where(Upload.id == row.id).execute()
            for observer in self._observers:
                observer("completed", row, serialize_file(created))
        self._storage.remove_partial(row.user, row.id)
        self._hashes.drop(row.id)
        self._metrics.completed.labels(row.protocol).inc()
        log.info("upload %s complete: %s (%d bytes, %s)", row.id, storage_path, row.size, file_type)
        return serialize_file(created)

    def cancel(self, user, upload_id):
        row = self._upload(user, upload_id)
        if row.state == "completing" and row.lease_until and row.lease_until >= self._now():
            raise Conflict("This upload is being completed and can no longer be cancelled.",
                           code="upload_completing")
        self._discard(row)
        self._metrics.cancelled.inc()

    def abandon(self, user, upload_id):
        """Remove an upload whose creation was answered with an error; never raises."""
        try:
            row = Upload.get_or_none((Upload.id == upload_id) & (Upload.user == user.name)
                                     & (Upload.state == "active"))
            if row is not None:
                self._discard(row, Upload.state == "active")
        except Exception:  # noqa: BLE001 - the error being answered matters more
            log.exception("could not remove the refused upload %s", upload_id)

    def _discard(self, row, condition=None):
        """Delete the row (only when ``condition`` still holds) and its data."""
        with self._database.atomic():
            query = Upload.delete().where(Upload.id == row.id)
            if condition is not None:
                query = query.where(condition)
            if not query.execute():
                return False
            UploadChunk.delete().where(UploadChunk.upload == row.id).execute()
        if row.final_name:
            # An interrupted completion may have linked the data into place already.
            self._storage.unpublish(row.user, row.id, row.job_id, row.final_name)
        self._storage.remove_partial(row.user, row.id)
        self._hashes.drop(row.id)
        return True

    def prune_hashing(self):
        self._hashes.prune()

    # -- the finished files (``Files``), for the resources and other areas ----

    def list_files(self, user, **criteria):
        return self.files.list_files(user, **criteria)

    def get_file(self, user, file_id):
        return self.files.get_file(user, file_id)

    def open_file(self, user, file_id):
        return self.files.open_file(user, file_id)

    def preview(self, user, file_id, tail=False):
        return self.files.preview(user, file_id, tail=tail)

    def thumbnail(self, user, file_id):
        return self.files.thumbnail(user, file_id)

    def delete_file(self, user, file_id):
        self.files.delete_file(user, file_id)

    def share(self, user, file_id, body):
        return self.files.share(user, file_id, body)

    def shares(self, user, file_id):
        return self.files.shares(user, file_id)

    def unshare(self, user, file_id, share_id):
        self.files.unshare(user, file_id, share_id)

    def shared_file(self, user, file_id=None, storage_path=None):
        return self.files.shared_file(user, file_id=file_id, storage_path=storage_path)

    def file_for_user(self, user_name, file_id):
        return self.files.file_for_user(user_name, file_id)

    def file_by_storage_path(self, user_name, storage_path):
        return self.files.file_by_storage_path(user_name, storage_path)

    def files_for_job(self, user_name, job_id):
        return self.files.files_for_job(user_name, job_id)

    def link_job(self, user_name, job_id, slurm_job_id):
        return self.files.link_job(user_name, job_id, slurm_job_id)

    def link_files(self, user_name, storage_paths, slurm_job_id):
        return self.files.link_files(user_name, storage_paths, slurm_job_id)

    def apply_retention(self):
        return self.files.apply_retention()

    # -- clean-up (the janitor service) --------------------------------------

    def expire_stale(self):
        """Removes unfinished uploads past their expiry; returns how many."""
        now = self._now()
        stale = Upload.select().where((Upload.expires_at < now)
                                      & ((Upload.state == "active") | (Upload.lease_until < now)))
        count = 0
        for row in list(stale):
            if self._discard(row, condition=Upload.expires_at < now):
                count += 1
                self._metrics.expired.inc()
                log.info("upload %s of %s expired (%r)", row.id, row.user, row.filename)
                for observer in self._observers:
                    observer("expired", row)
        return count

    def remove_orphans(self):
        """Partial files without an upload row (a crash between creating the
        file and its row, or between a completion's commit and its clean-up),
        once older than ``expire_after``; returns how many."""
        cutoff = self._clock() - self._settings.expire_after
        count = 0
        for user, name, mtime in self._storage.partial_files():
            if mtime >= cutoff or Upload.get_or_none(Upload.id == name) is not None:
                continue
            self._storage.remove_partial(user, name)
            count += 1
            log.info("removed orphaned partial file %s of %s", name, user)
        return count
