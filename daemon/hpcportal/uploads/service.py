"""The uploads domain: starting, receiving, completing and cancelling uploads,
and the finished files. No HTTP here; see ``hpcportal.resources.uploads``.

Every call takes the caller (``hpcportal.auth.User``) and only ever finds
that user's rows: another user's ids are simply unknown (NotFound).
Nothing is acknowledged before its bytes are fsynced into the partial file
on the shared filesystem and its row is committed, so any head node can
carry on an upload another one started, also after a crash.
"""

import datetime
import functools
import hashlib
import logging
import os
import re
import threading
import time
import uuid

import peewee

from ..errors import (Conflict, NotFound, PayloadTooLarge, UnsupportedMediaType, Unprocessable,
                      ValidationError)
from ..models.base import isoformat
from ..models.uploads import Upload, UploadChunk, UploadedFile
from .classify import SAMPLE_BYTES, looks_like_text
from .hashing import BackgroundHashing, RunningHash
from .links import JobLinks
from .names import clean_filename, clean_job_id
from .storage import Truncated
from .tus import ChecksumMismatch

log = logging.getLogger(__name__)

SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
# A completion holds the upload for this long, renewed while it hashes; a
# head that died mid-completion is taken over once the lease has run out.
COMPLETION_LEASE = 120
LEASE_RENEW_BYTES = 256 * 1024 * 1024
# A complete tus upload this long untouched has no request left finishing it.
STRANDED_AFTER = 60
# How long a completion waits for this process to finish hashing ahead; past
# that it reads back what is not hashed yet. Well inside COMPLETION_LEASE, which
# is only renewed once the completion itself hashes.
HASH_WAIT = 30
PREVIEW_BYTES = 64 * 1024


def _token_line(index, token):
    return f"{index}:{token};".encode()


def _dt(timestamp):
    return datetime.datetime.fromtimestamp(int(timestamp), datetime.timezone.utc).replace(tzinfo=None)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def path_hash(path):
    return hashlib.sha256(os.path.normpath(path).encode("utf-8")).hexdigest()


def serialize_file(row):
    return {
        "file_id": row.id,
        "filename": row.filename,
        "size": row.size,
        "sha256": row.sha256,
        "file_type": row.file_type,
        "mime_type": row.mime_type,
        "storage_path": row.storage_path,
        "job_id": row.job_id,
        "slurm_job_id": row.slurm_job_id,
        "created_at": isoformat(row.created_at),
    }


class Uploads(JobLinks):
    """Registered as ``portal.areas["uploads"]``. See the package docstring
    for the functions other areas use."""

    def __init__(self, settings, database, storage, classifier, metrics, reservations,
                 clock=time.time, new_id=lambda: uuid.uuid4().hex, listener=None):
        """``listener`` ("<host>/<address>:<port>", or None when the port is
        not fixed) names this daemon's listening socket: only one process can
        hold it at a time, so leases held under it by another process are
        left over from a predecessor that died."""
        self._settings = settings
        self._listener = listener
        self._holder = f"{listener or 'unnamed'}#{uuid.uuid4().hex[:12]}"
        self._database = database
        self._storage = storage
        self._reservations = reservations
        self._classifier = classifier
        self._metrics = metrics
        self._clock = clock
        self._new_id = new_id
        self._hashing = {}  # upload id -> RunningHash, for uploads this process saw start
        self._hashing_ahead = BackgroundHashing()
        self._stranded_failures = {}  # upload id -> why finishing it failed last time
        self._hashing_lock = threading.Lock()

    @property
    def settings(self):
        return self._settings

    def _now(self):
        return _dt(self._clock())

    def _expiry(self):
        return _dt(self._clock() + self._settings.expire_after)

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
        upload_id = self._new_id()
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
        self._forget_hashed(row.id, index)
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
        following = self._plan_hashing(row, started=index == 0)
        if following:
            self._hashing_ahead.submit(row.id, functools.partial(self._hash_forward, row, following))
        received = self._received(row.id)
        return {"upload_id": row.id, "chunk_index": index,
                "received_bytes": self._received_bytes(row, received), "received_chunks": received}

    # -- hashing as chunks arrive ----------------------------------------------

    def _hashing_state(self, upload_id, create=False):
        with self._hashing_lock:
            state = self._hashing.get(upload_id)
            if state is None and create:
                state = self._hashing[upload_id] = RunningHash()
            return state

    def _drop_hashing(self, upload_id):
        with self._hashing_lock:
            self._hashing.pop(upload_id, None)

    def _forget_hashed(self, upload_id, index):
        """A re-send of a chunk already hashed here: start the hash over. Looked at unlocked
        first: hashing holds the lock for whole chunks (one hashed meanwhile gets a new token)."""
        state = self._hashing_state(upload_id)
        if state is not None and index < state.next_index:
            with state.lock:
                if index < state.next_index:
                    state.reset()

    def _plan_hashing(self, row, started):
        """The recorded chunks that may continue this process's hash, in order,
        as (index, token); read here so that the hashing threads need no
        database connection. Only the process that received chunk 0 keeps a
        hash: other heads would have to read everything from the start."""
        state = self._hashing_state(row.id, create=started)
        if state is None:
            return None
        return list(UploadChunk.select(UploadChunk.chunk_index, UploadChunk.token)
                    .where((UploadChunk.upload == row.id)
                           & (UploadChunk.chunk_index >= state.next_index))
                    .order_by(UploadChunk.chunk_index).tuples())

    def _hash_forward(self, row, following):
        """Hash the chunks of ``following`` that continue the hash, in order
        (they were just written, so they are read from the page cache). A
        chunk re-sent meanwhile has a new token: the completion notices."""
        state = self._hashing_state(row.id)
        if state is None:
            return
        with state.lock:
            fd = None
            try:
                for index, token in following:
                    if index < state.next_index:
                        continue
                    if index != state.next_index:
                        break
                    if fd is None:
                        fd = self._open_partial(row, write=False)
                    offset, length = self.chunk_span(row, index)
                    self._storage.hash_range(fd, state.digest, offset, offset + length, release=True)
                    state.tokens.update(_token_line(index, token))
                    state.next_index += 1
                    state.offset = offset + length
            finally:
                if fd is not None:
                    os.close(fd)

    def _hash_start(self, row):
        """(digest, offset): a hash of the first ``offset`` bytes still valid
        for ``row``, or a fresh hash at 0."""
        state = self._hashing_state(row.id)
        if state is None:
            return hashlib.sha256(), 0
        with state.lock:
            if row.protocol == "tus":
                return state.digest.copy(), state.offset
            tokens = hashlib.sha256()
            count = 0
            for index, token in (UploadChunk.select(UploadChunk.chunk_index, UploadChunk.token)
                                 .where((UploadChunk.upload == row.id)
                                        & (UploadChunk.chunk_index < state.next_index))
                                 .order_by(UploadChunk.chunk_index).tuples()):
                tokens.update(_token_line(index, token))
                count += 1
            if count == state.next_index and tokens.digest() == state.tokens.digest():
                return state.digest.copy(), state.offset
        return hashlib.sha256(), 0

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
        done = UploadedFile.get_or_none((UploadedFile.upload_id == upload_id)
                                        & (UploadedFile.user == user.name))
        if done is not None:
            return serialize_file(done)
        row = self._upload(user, upload_id)
        if row.protocol != "chunk":
            raise Conflict("A tus upload completes by itself when its last byte arrives.",
                           code="wrong_protocol")
        self._claim(row)
        try:
            received = set(self._received(row.id))
            missing = [i for i in range(row.total_chunks) if i not in received]
            if missing:
                raise Conflict(
                    f"The upload is missing {len(missing)} of {row.total_chunks} chunks.",
                    code="missing_chunks", extra={"missing_chunks": missing})
            return self._finish(row)
        except BaseException:
            self._release(row)
            raise

    def _claim(self, row):
        now = self._now()
        claimed = (Upload.update(state="completing", lease_until=_dt(self._clock() + COMPLETION_LEASE),
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

    def _release(self, row):
        Upload.update(state="active", lease_until=None, lease_holder=None).where(
            (Upload.id == row.id) & (Upload.state == "completing")
            & (Upload.lease_holder == self._holder)).execute()

    def release_abandoned_leases(self):
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

    def _finish(self, row):
        owner = (row.uid, row.gid)
        fd = self._open_partial(row, write=False)
        try:
            on_disk = os.fstat(fd).st_size
            if on_disk != row.size:
                raise Conflict(f"The partial file holds {on_disk} bytes, expected {row.size}.",
                               code="size_mismatch")
            progress = {"next": LEASE_RENEW_BYTES}

            def renew(done):
                if done >= progress["next"]:
                    progress["next"] = done + LEASE_RENEW_BYTES
                    Upload.update(lease_until=_dt(self._clock() + COMPLETION_LEASE)).where(
                        Upload.id == row.id).execute()

            self._hashing_ahead.wait(row.id, HASH_WAIT)
            digest, start = self._hash_start(row)
            end = self._storage.hash_range(fd, digest, start, on_progress=renew)
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
        with self._database.atomic():
            UploadedFile.delete().where(UploadedFile.storage_path_hash == path_hash(storage_path)).execute()
            created = UploadedFile.create(
                id=self._new_id(), upload_id=row.id, user=row.user, filename=name,
                job_id=row.job_id, size=row.size, sha256=sha256, file_type=file_type,
                mime_type=mime_type[:255], storage_path=storage_path,
                storage_path_hash=path_hash(storage_path), created_at=self._now())
            UploadChunk.delete().where(UploadChunk.upload == row.id).execute()
            Upload.delete().where(Upload.id == row.id).execute()
        self._storage.remove_partial(row.user, row.id)
        self._drop_hashing(row.id)
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
        self._drop_hashing(row.id)
        return True

    # -- tus -----------------------------------------------------------------

    def tus_state(self, user, upload_id):
        """(offset, length, metadata, expires_at or None) of a tus upload,
        also once it has become a file."""
        done = UploadedFile.get_or_none((UploadedFile.upload_id == upload_id)
                                        & (UploadedFile.user == user.name))
        if done is not None:
            return done.size, done.size, None, None, serialize_file(done)
        row = self._upload(user, upload_id)
        if row.protocol != "tus":
            raise NotFound(f"There is no tus upload {upload_id!r}.", code="upload_not_found")
        return row.tus_offset, row.size, row.metadata, row.expires_at, None

    def tus_append(self, user, upload_id, offset, stream, content_length=None, checksum=None):
        """Append at ``offset``; returns (new offset, file or None).

        ``checksum`` is (hashlib object, expected digest). The partial file is
        locked while one PATCH writes, and the offset moves by compare-and-set,
        so two PATCHes at the same offset (two heads) cannot both succeed.
        """
        done = UploadedFile.get_or_none((UploadedFile.upload_id == upload_id)
                                        & (UploadedFile.user == user.name))
        if done is not None:
            if offset == done.size and not content_length:
                return done.size, serialize_file(done)
            raise Conflict(f"Upload-Offset must be {done.size}; the upload is complete.",
                           code="offset_mismatch", headers={"Upload-Offset": str(done.size)})
        row = self._upload(user, upload_id)
        if row.protocol != "tus":
            raise NotFound(f"There is no tus upload {upload_id!r}.", code="upload_not_found")
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
            digests = [checksum[0]] if checksum else ()
            try:
                written = self._storage.write_at(fd, offset, stream, content_length if
                                                 content_length is not None else room,
                                                 digests, exact=content_length is not None)
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
                raise ChecksumMismatch(
                    f"The body does not match its Upload-Checksum ({checksum[0].name}); "
                    f"nothing was recorded, Upload-Offset stays {offset}.")
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
        # partial, not a lambda: ``row`` is read again below, the job keeps this one.
        self._hashing_ahead.submit(row.id, functools.partial(self._hash_tus, row, new_offset,
                                                             started=offset == 0))
        if new_offset < row.size:
            return new_offset, None
        row = self._upload(user, upload_id)
        self._claim(row)
        try:
            return new_offset, self._finish(row)
        except BaseException:
            self._release(row)
            raise

    def finish_stranded_tus(self):
        """Turn into files the tus uploads whose last byte was acknowledged but
        whose completion never ended (the head died, the database went away):
        their client saw Upload-Offset reach Upload-Length and will not ask
        again. Returns how many became files."""
        quiet_since = _dt(self._clock() - STRANDED_AFTER)
        now = self._now()
        stranded = Upload.select().where(
            (Upload.protocol == "tus") & (Upload.tus_offset == Upload.size)
            & (Upload.updated_at < quiet_since)
            & ((Upload.state == "active") | (Upload.lease_until < now)))
        count = 0
        failures = {}  # only this pass's: uploads gone since are forgotten
        for row in list(stranded):
            try:
                self._claim(row)
            except (Conflict, NotFound):
                continue  # another head is on it
            try:
                self._finish(row)
                count += 1
            except Exception as exc:
                self._release(row)
                failures[row.id] = reason = str(exc) or type(exc).__name__
                if self._stranded_failures.get(row.id) != reason:  # once, not every pass
                    log.warning("upload %s of %s: finishing its completion failed: %s",
                                row.id, row.user, reason)
        self._stranded_failures = failures
        return count

    def _hash_tus(self, row, committed, started):
        """tus data below the committed offset never changes: hash up to it."""
        state = self._hashing_state(row.id, create=started)
        if state is None:
            return
        with state.lock:
            if state.offset < committed:
                fd = self._open_partial(row, write=False)
                try:
                    state.offset = self._storage.hash_range(fd, state.digest, state.offset, committed,
                                                           release=True)
                finally:
                    os.close(fd)

    def prune_hashing(self):
        """Forget hashes of uploads that ended on another head."""
        with self._hashing_lock:
            known = list(self._hashing)
        alive = {upload_id for (upload_id,) in Upload.select(Upload.id)
                 .where(Upload.id.in_(known)).tuples()} if known else set()
        for upload_id in known:
            if upload_id not in alive:
                self._drop_hashing(upload_id)

    def _check_offset(self, row, offset):
        if offset != row.tus_offset:
            raise Conflict(f"Upload-Offset is {offset} but the upload is at {row.tus_offset}.",
                           code="offset_mismatch", headers={"Upload-Offset": str(row.tus_offset)})

    def tus_terminate(self, user, upload_id):
        done = UploadedFile.get_or_none((UploadedFile.upload_id == upload_id)
                                        & (UploadedFile.user == user.name))
        if done is not None:
            raise Conflict("This upload is complete; delete the file instead.", code="upload_complete")
        self.cancel(user, upload_id)

    # -- files ---------------------------------------------------------------

    def _file(self, user, file_id):
        row = UploadedFile.get_or_none((UploadedFile.id == file_id) & (UploadedFile.user == user.name))
        if row is None:
            raise NotFound(f"There is no file {file_id!r}.", code="file_not_found")
        return row

    def list_files(self, user, job_id=None, file_type=None, limit=100, offset=0):
        query = UploadedFile.select().where(UploadedFile.user == user.name)
        if job_id:
            query = query.where(UploadedFile.job_id == job_id)
        if file_type:
            query = query.where(UploadedFile.file_type == file_type)
        total = query.count()
        rows = query.order_by(UploadedFile.created_at.desc(), UploadedFile.id).limit(limit).offset(offset)
        return [serialize_file(r) for r in rows], total

    def get_file(self, user, file_id):
        return serialize_file(self._file(user, file_id))

    def open_file(self, user, file_id):
        """(file dict, read-only descriptor); the caller closes the descriptor."""
        row = self._file(user, file_id)
        return serialize_file(row), self._storage.open_file(row.storage_path, owner_uid=user.uid)

    def preview(self, user, file_id):
        info, fd = self.open_file(user, file_id)
        try:
            sample = os.pread(fd, PREVIEW_BYTES, 0)
        finally:
            os.close(fd)
        if not looks_like_text(sample):
            raise UnsupportedMediaType(
                f"{info['filename']} is a {info['file_type']} file ({info['mime_type']}); "
                "only text files have a preview.", code="not_text")
        return {"file_id": info["file_id"], "filename": info["filename"],
                "mime_type": info["mime_type"], "size": info["size"],
                "truncated": info["size"] > PREVIEW_BYTES,
                "content": sample.decode("utf-8", errors="ignore")}

    def delete_file(self, user, file_id):
        row = self._file(user, file_id)
        self._remove_file(row)

    def _remove_file(self, row, condition=None):
        query = UploadedFile.delete().where(UploadedFile.id == row.id)
        if condition is not None:
            query = query.where(condition)
        if query.execute():
            self._storage.remove_file(row.storage_path)
            return True
        return False

    # -- for other areas (jobs) ----------------------------------------------

    def file_for_user(self, user_name, file_id):
        row = UploadedFile.get_or_none((UploadedFile.id == file_id) & (UploadedFile.user == user_name))
        return serialize_file(row) if row else None

    def file_by_storage_path(self, user_name, storage_path):
        if not isinstance(storage_path, str) or not storage_path:
            return None
        row = UploadedFile.get_or_none((UploadedFile.storage_path_hash == path_hash(storage_path))
                                       & (UploadedFile.user == user_name))
        return serialize_file(row) if row else None

    def files_for_job(self, user_name, job_id):
        rows = (UploadedFile.select().where((UploadedFile.user == user_name)
                                            & (UploadedFile.job_id == job_id))
                .order_by(UploadedFile.created_at, UploadedFile.id))
        return [serialize_file(r) for r in rows]

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

    def apply_retention(self):
        days = self._settings.retention_days
        if days is None:
            return 0
        cutoff = _dt(self._clock() - days * 86400)
        count = 0
        for row in list(UploadedFile.select().where(UploadedFile.created_at < cutoff)):
            if self._remove_file(row, condition=UploadedFile.created_at < cutoff):
                count += 1
                self._metrics.retained_removed.inc()
                log.info("file %s of %s removed after %s days: %s", row.id, row.user, days,
                         row.storage_path)
        return count
