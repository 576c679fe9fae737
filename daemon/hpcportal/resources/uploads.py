"""HTTP side of uploads: the dashboard's chunk protocol, tus 1.0.0, files.

Thin: parse the request, call ``hpcportal.uploads.Uploads``, answer. Chunk
and PATCH bodies are streamed from the request into the partial file one
block at a time (never read whole into memory).
"""

import io
import re
import shutil
import tempfile

import falcon

from ..errors import (PayloadTooLarge, TusChecksumMismatch, TusVersionUnsupported,
                      UnsupportedMediaType, ValidationError)
from ..uploads import tus
from ..uploads.browse import sort_names
from ..uploads.storage import BLOCK
from .base import bool_param, paging, read_json
from .downloads import send_file

FILE_TYPES = ("archive", "sif", "mesh", "data", "script", "text", "binary")
FIELD_LIMIT = 4096


def _int_header(req, name, required=True):
    raw = req.get_header(name)
    if raw is None:
        if required:
            raise ValidationError(f"The {name} header is required.", errors={name: "required"})
        return None
    if not re.fullmatch(r"\d{1,19}", raw.strip()):
        raise ValidationError(f"The {name} header must be a non-negative integer.",
                              errors={name: "must be a non-negative integer"})
    return int(raw.strip())


class _Body:
    """The request body, at most ``length`` bytes, with ``readinto`` (falcon's
    bounded stream has only ``read``, which allocates a new object per block)."""

    def __init__(self, stream, length):
        self._stream = stream
        self._left = length

    def readinto(self, buffer):
        if self._left <= 0:
            return 0
        view = memoryview(buffer)[:self._left]
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            count = readinto(view) or 0
        else:
            data = self._stream.read(len(view))
            count = len(data)
            view[:count] = data
        self._left -= count
        return count

    def read(self, size=-1):
        if self._left <= 0:
            return b""
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._stream.read(size)
        self._left -= len(data)
        return data


def body_of(req):
    """A bounded body stream when the length is known, else the raw stream
    (the server ends it after a chunked body)."""
    if req.content_length is None:
        return req.stream
    return _Body(req.stream, req.content_length)


def _media_type(req):
    return (req.content_type or "").split(";")[0].strip().lower()


# -- the chunk protocol ------------------------------------------------------


class InitResource:
    def __init__(self, uploads, rate_limits):
        self._uploads = uploads
        self._rate_limits = rate_limits

    def on_post(self, req, resp):
        self._rate_limits.check(req.context.user, "upload_init")
        body = read_json(req)
        row = self._uploads.start(
            req.context.user, body.get("filename"), body.get("size"), job_id=body.get("job_id"),
            sha256=body.get("sha256"), chunk_size=body.get("chunk_size"))
        req.context.audit_target = f"upload:{row.id}"
        req.context.audit_detail = {"filename": row.filename, "size": row.size}
        answer = self._uploads.serialize_upload(row, received=[])
        resp.status = falcon.HTTP_201
        resp.media = {key: answer[key] for key in
                      ("upload_id", "chunk_size", "total_chunks", "expires_at", "received_chunks")}


class ChunkResource:
    def __init__(self, uploads):
        self._uploads = uploads

    def on_post(self, req, resp):
        user = req.context.user
        fields = {name: req.get_param(name) for name in ("upload_id", "chunk_index", "chunk_sha256")}
        kind = _media_type(req)
        if kind == "application/octet-stream":
            answer = self._uploads.receive_chunk(
                user, fields["upload_id"], self._index(fields), body_of(req),
                content_length=req.content_length, chunk_sha256=fields["chunk_sha256"])
        elif kind == "multipart/form-data":
            answer = self._multipart(req, user, fields)
        else:
            raise UnsupportedMediaType(
                "Send a chunk as multipart/form-data (fields upload_id, chunk_index, optional "
                "chunk_sha256, file part 'chunk') or as application/octet-stream with upload_id "
                "and chunk_index in the query string.")
        req.context.audit_target = f"upload:{answer['upload_id']}"
        req.context.audit_detail = {"chunk_index": answer["chunk_index"]}
        resp.media = answer

    @staticmethod
    def _index(fields):
        raw = fields.get("chunk_index")
        if raw is None or not re.fullmatch(r"\d{1,9}", str(raw).strip()):
            raise ValidationError("chunk_index is required and must be a non-negative integer.",
                                  errors={"chunk_index": "must be a non-negative integer"})
        return int(str(raw).strip())

    def _multipart(self, req, user, fields):
        answer = None
        spool = None
        sha_after_chunk = False
        try:
            for part in req.get_media():
                if part.name == "chunk":
                    if answer is not None or spool is not None:
                        raise ValidationError("The request carries more than one chunk part.",
                                              errors={"chunk": "sent twice"})
                    if fields["upload_id"] and fields["chunk_index"] is not None:
                        answer = self._uploads.receive_chunk(
                            user, fields["upload_id"], self._index(fields), part.stream,
                            chunk_sha256=fields["chunk_sha256"])
                    else:
                        # Fields after the file part: keep the bytes on disk until we know
                        # where they go (slower; browsers send fields in append order).
                        spool = tempfile.TemporaryFile()
                        shutil.copyfileobj(part.stream, spool, BLOCK)
                        spool.seek(0)
                elif part.name in fields:
                    value = part.stream.read(FIELD_LIMIT + 1)
                    if len(value) > FIELD_LIMIT:
                        raise ValidationError(f"The field {part.name} is too long.",
                                              errors={part.name: "too long"})
                    try:
                        fields[part.name] = value.decode("utf-8").strip()
                    except UnicodeDecodeError:
                        raise ValidationError(f"The field {part.name} is not UTF-8 text.",
                                              errors={part.name: "not UTF-8"}) from None
                    if part.name == "chunk_sha256" and answer is not None:
                        sha_after_chunk = True
            if spool is not None:
                answer = self._uploads.receive_chunk(
                    user, fields["upload_id"], self._index(fields), spool,
                    chunk_sha256=fields["chunk_sha256"])
        finally:
            if spool is not None:
                spool.close()
        if answer is None:
            raise ValidationError("The request has no file part named 'chunk'.",
                                  errors={"chunk": "required"})
        if sha_after_chunk:
            self._uploads.verify_chunk(user, fields["upload_id"], self._index(fields),
                                       fields["chunk_sha256"])
        return answer


class CompleteResource:
    def __init__(self, uploads):
        self._uploads = uploads

    def on_post(self, req, resp):
        body = read_json(req)
        req.context.audit_target = f"upload:{body.get('upload_id')}"
        resp.media = self._uploads.complete(req.context.user, body.get("upload_id"))


class UploadResource:
    def __init__(self, uploads):
        self._uploads = uploads

    def on_get(self, req, resp, upload_id):
        resp.media = self._uploads.status(req.context.user, upload_id)
        resp.set_header("Cache-Control", "no-store")

    def on_delete(self, req, resp, upload_id):
        req.context.audit_target = f"upload:{upload_id}"
        self._uploads.cancel(req.context.user, upload_id)
        resp.status = falcon.HTTP_204


# -- tus 1.0.0 ---------------------------------------------------------------


class _TusBase:
    def __init__(self, uploads, rate_limits=None):
        self._uploads = uploads
        self._rate_limits = rate_limits

    def _begin(self, req, resp, check_version=True):
        """Headers every tus answer carries, also an error's."""
        resp.set_header("Tus-Resumable", tus.VERSION)
        resp.set_header("Cache-Control", "no-store")
        if check_version and req.get_header("Tus-Resumable") != tus.VERSION:
            raise TusVersionUnsupported(
                f"This server speaks tus {tus.VERSION}; send 'Tus-Resumable: {tus.VERSION}'.",
                headers={"Tus-Version": tus.VERSION})

    def _expires(self, resp, expires_at):
        if expires_at is not None:
            resp.set_header("Upload-Expires", tus.http_date(expires_at))

    def _body_checksum(self, req):
        """The body's Upload-Checksum, or None; 413/415/400 for a body refused
        before any of it is read."""
        if _media_type(req) != tus.OFFSET_CONTENT_TYPE:
            raise UnsupportedMediaType(f"A tus PATCH body must be {tus.OFFSET_CONTENT_TYPE}.")
        limit = self._uploads.settings.max_chunk_size
        if req.content_length is not None and req.content_length > limit:
            raise PayloadTooLarge(
                f"A PATCH body may be at most {limit} bytes (uploads.max_chunk_size); set the tus "
                "client's chunk size to at most that.", code="chunk_too_large",
                extra={"max_chunk_size": limit})
        if req.get_header("Upload-Checksum"):
            return tus.parse_checksum(req.get_header("Upload-Checksum"))
        return None

    def _append(self, req, resp, upload_id, offset):
        """Stream the body at ``offset``; (new offset, file or None)."""
        checksum = self._body_checksum(req)
        new_offset, finished = self._uploads.tus_append(
            req.context.user, upload_id, offset, body_of(req), req.content_length, checksum)
        resp.set_header("Upload-Offset", str(new_offset))
        if finished is not None:
            resp.set_header("Upload-File-Id", finished["file_id"])
        return new_offset, finished


class TusCollectionResource(_TusBase):
    def on_options(self, req, resp):
        self._begin(req, resp, check_version=False)
        settings = self._uploads.settings
        resp.set_header("Tus-Version", tus.VERSION)
        resp.set_header("Tus-Extension", ",".join(tus.EXTENSIONS))
        resp.set_header("Tus-Max-Size", str(settings.max_size))
        resp.set_header("Tus-Checksum-Algorithm", ",".join(tus.CHECKSUM_ALGORITHMS))
        resp.status = falcon.HTTP_204

    def on_post(self, req, resp):
        self._begin(req, resp)
        self._rate_limits.check(req.context.user, "upload_init")
        if req.get_header("Upload-Defer-Length"):
            raise ValidationError("Upload-Defer-Length is not supported; send Upload-Length.",
                                  errors={"Upload-Defer-Length": "not supported"})
        length = _int_header(req, "Upload-Length")
        metadata = tus.parse_metadata(req.get_header("Upload-Metadata"))
        filename = metadata.get("filename") or metadata.get("name")
        if not filename:
            raise ValidationError("Upload-Metadata must carry the file's name as 'filename'.",
                                  errors={"Upload-Metadata": "filename is required"})
        has_body = bool(req.content_length)
        if has_body:
            # Refused before the upload exists: a refused creation reserves nothing.
            if _media_type(req) != tus.OFFSET_CONTENT_TYPE:
                raise UnsupportedMediaType(f"A creation body must be {tus.OFFSET_CONTENT_TYPE}.")
            self._body_checksum(req)
            if req.content_length > length:
                raise PayloadTooLarge(
                    f"The body has {req.content_length} bytes but Upload-Length is {length}.",
                    code="exceeds_upload_length")
        row = self._uploads.start(req.context.user, filename, length,
                                  job_id=metadata.get("job_id") or None,
                                  sha256=metadata.get("sha256") or None,
                                  protocol="tus", metadata=metadata)
        try:
            self._created(req, resp, row, length, has_body)
        except BaseException:
            # The client never learns the upload's address from an error answer:
            # left behind, it would hold its bytes of the quota until it expires.
            self._uploads.abandon(req.context.user, row.id)
            raise

    def _created(self, req, resp, row, length, has_body):
        req.context.audit_target = f"upload:{row.id}"
        req.context.audit_detail = {"filename": row.filename, "size": row.size, "protocol": "tus"}
        resp.set_header("Location", f"{req.prefix}/api/v2/files/tus/{row.id}")
        self._expires(resp, row.expires_at)
        body = {"upload_id": row.id}
        if not has_body and length == 0:
            # An empty file is complete at creation; there is no body to check.
            _, finished = self._uploads.tus_append(req.context.user, row.id, 0, io.BytesIO(), 0)
            resp.set_header("Upload-Offset", "0")
            resp.set_header("Upload-File-Id", finished["file_id"])
            body["file"] = finished
        elif has_body:
            try:
                result = self._append(req, resp, row.id, 0)
            except TusChecksumMismatch as exc:
                # Created all the same: only the data part was refused.
                resp.status = falcon.HTTP_201
                resp.set_header("Upload-Offset", "0")
                resp.media = exc.to_dict()
                return
            if result[1] is not None:
                body["file"] = result[1]
        resp.status = falcon.HTTP_201
        resp.media = body


class TusUploadResource(_TusBase):
    def on_head(self, req, resp, upload_id):
        self._begin(req, resp)
        state = self._uploads.tus_state(req.context.user, upload_id)
        resp.set_header("Upload-Offset", str(state.offset))
        resp.set_header("Upload-Length", str(state.length))
        if state.metadata:
            resp.set_header("Upload-Metadata", tus.encode_metadata(state.metadata))
        self._expires(resp, state.expires_at)
        resp.status = falcon.HTTP_200

    def on_patch(self, req, resp, upload_id):
        self._begin(req, resp)
        offset = _int_header(req, "Upload-Offset")
        req.context.audit_target = f"upload:{upload_id}"
        _, finished = self._append(req, resp, upload_id, offset)
        if finished is None:
            self._expires(resp, self._uploads.tus_state(req.context.user, upload_id).expires_at)
        resp.status = falcon.HTTP_204

    def on_delete(self, req, resp, upload_id):
        self._begin(req, resp)
        req.context.audit_target = f"upload:{upload_id}"
        self._uploads.tus_terminate(req.context.user, upload_id)
        resp.status = falcon.HTTP_204

    def on_post(self, req, resp, upload_id):
        """X-HTTP-Method-Override, for clients behind proxies that drop PATCH
        (tus-js-client ``overridePatchMethod``)."""
        method = (req.get_header("X-HTTP-Method-Override") or "").upper()
        responders = {"PATCH": self.on_patch, "DELETE": self.on_delete, "HEAD": self.on_head}
        if method not in responders:
            raise falcon.HTTPMethodNotAllowed(
                ["HEAD", "PATCH", "DELETE"],
                description="POST on a tus upload needs X-HTTP-Method-Override: PATCH, DELETE or HEAD.")
        responders[method](req, resp, upload_id)


# -- files -------------------------------------------------------------------


class FilesResource:
    def __init__(self, uploads):
        self._uploads = uploads

    def on_get(self, req, resp):
        limit, offset = paging(req)
        # ``kind`` is the browser's name for file_type; both are taken.
        file_type = req.get_param("kind") or req.get_param("file_type")
        if file_type and file_type not in FILE_TYPES:
            field = "kind" if req.get_param("kind") else "file_type"
            raise ValidationError(f"{field} must be one of {', '.join(FILE_TYPES)}.",
                                  errors={field: "unknown type"})
        sort = req.get_param("sort") or "-time"
        if sort not in sort_names():
            raise ValidationError(f"sort must be one of {', '.join(sort_names())} (a leading '-' "
                                  "sorts descending).", errors={"sort": "unknown order"})
        q = req.get_param("q")
        if q is not None and (len(q) > 255 or any(ch < " " for ch in q)):
            raise ValidationError("q (a part of a file name) may be at most 255 characters, "
                                  "without control characters.", errors={"q": "not a name part"})
        files, total = self._uploads.list_files(
            req.context.user, job_id=req.get_param("job_id"), file_type=file_type, q=q, sort=sort,
            shared=bool_param(req, "shared"), limit=limit, offset=offset)
        resp.media = {"files": files, "total": total, "limit": limit, "offset": offset}


class FileResource:
    def __init__(self, uploads):
        self._uploads = uploads

    def on_get(self, req, resp, file_id):
        resp.media = self._uploads.get_file(req.context.user, file_id)

    def on_delete(self, req, resp, file_id):
        req.context.audit_target = f"file:{file_id}"
        self._uploads.delete_file(req.context.user, file_id)
        resp.status = falcon.HTTP_204


class FileContentResource:
    def __init__(self, uploads):
        self._uploads = uploads

    def on_get(self, req, resp, file_id):
        info, fd = self._uploads.open_file(req.context.user, file_id)
        send_file(req, resp, fd, etag=f'"{info["sha256"]}"', filename=info["filename"],
                  content_type=info["mime_type"] or "application/octet-stream")


class FilePreviewResource:
    def __init__(self, uploads):
        self._uploads = uploads

    def on_get(self, req, resp, file_id):
        answer = self._uploads.preview(req.context.user, file_id, tail=bool_param(req, "tail"))
        if answer["kind"] == "image":
            answer["thumbnail"] = f"{req.root_path}/api/v2/files/{file_id}/thumbnail"
        resp.media = answer


class FileThumbnailResource:
    def __init__(self, uploads):
        self._uploads = uploads

    def on_get(self, req, resp, file_id):
        # A thumbnail follows from the file's content alone: a client holding it decodes nothing.
        etag = f'"{self._uploads.get_file(req.context.user, file_id)["sha256"]}-thumbnail"'
        resp.set_header("Cache-Control", "private, no-cache")
        if etag in [t.strip() for t in (req.get_header("If-None-Match") or "").split(",")]:
            resp.set_header("ETag", etag)
            resp.status = falcon.HTTP_304
            return
        _, png = self._uploads.thumbnail(req.context.user, file_id)
        resp.set_header("ETag", etag)
        resp.content_type = "image/png"
        resp.data = png


def add_routes(app, *, uploads, rate_limits):
    app.add_route("/api/v2/files/upload/init", InitResource(uploads, rate_limits))
    app.add_route("/api/v2/files/upload/chunk", ChunkResource(uploads))
    app.add_route("/api/v2/files/upload/complete", CompleteResource(uploads))
    app.add_route("/api/v2/files/upload/{upload_id}", UploadResource(uploads))
    app.add_route("/api/v2/files/tus", TusCollectionResource(uploads, rate_limits))
    app.add_route("/api/v2/files/tus/{upload_id}", TusUploadResource(uploads))
    app.add_route("/api/v2/files", FilesResource(uploads))
    app.add_route("/api/v2/files/{file_id}", FileResource(uploads))
    app.add_route("/api/v2/files/{file_id}/content", FileContentResource(uploads))
    app.add_route("/api/v2/files/{file_id}/preview", FilePreviewResource(uploads))
    app.add_route("/api/v2/files/{file_id}/thumbnail", FileThumbnailResource(uploads))

