"""Sending a file from an open descriptor: one byte range, ETag, If-Range, 304.

Used by the files API (uploads) and the job results download, so both speak
HTTP ranges the same way.
"""

import errno
import os
import re
import urllib.parse

import falcon

from ..errors import RangeNotSatisfiable


def _position(digits):
    """A byte position; positions past any file count as one huge number
    (int() refuses strings of more than 4300 digits)."""
    return int(digits) if len(digits) <= 19 else 2**63


class FileShrank(OSError):
    """The file holds less than the answer's Content-Length promised."""


def parse_range(header, size):
    """(start, end inclusive) of one ``bytes=`` range; None to send the whole file."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "", re.ASCII)
    if not match or (match.group(1) == "" and match.group(2) == ""):
        return None  # absent, malformed or several ranges: RFC 9110 lets us ignore it
    first, last = match.group(1), match.group(2)
    shown = header.strip()[:100]
    if first == "":
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"The range {shown} is outside the file's {size} bytes.",
                                      headers={"Content-Range": f"bytes */{size}"})
        return max(size - suffix, 0), size - 1
    start = _position(first)
    if start >= size or (last and _position(last) < start):
        raise RangeNotSatisfiable(f"The range {shown} is outside the file's {size} bytes.",
                                  headers={"Content-Range": f"bytes */{size}"})
    return start, min(_position(last), size - 1) if last else size - 1


class FileRange:
    """One byte range of a descriptor, as a read-only file that owns the descriptor.

    Handed to the WSGI server's ``wsgi.file_wrapper`` (falcon does that for a
    ``resp.stream`` with ``read``): waitress then sends it from its event loop
    as the client takes it, so a client that reads nothing holds no worker
    thread. Offsets are relative to the range: ``seek(0, 2)`` is its end, which
    is how waitress measures what is left to send.
    """

    def __init__(self, fd, start, length):
        self._fd = fd
        self._start = start
        self._length = length
        self._position = 0

    def read(self, size=-1):
        left = self._length - self._position
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0 or self._fd is None:
            return b""
        block = os.pread(self._fd, size, self._start + self._position)
        if not block:
            # Returning b"" would leave waitress retrying the send for ever;
            # an error closes the connection, so the client sees a cut answer.
            raise FileShrank(errno.EIO, f"the file shrank to {self._start + self._position} bytes while it "
                             "was being sent")
        self._position += len(block)
        return block

    def seek(self, offset, whence=os.SEEK_SET):
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = min(max(0, base + offset), self._length)
        return self._position

    def tell(self):
        return self._position

    def seekable(self):
        return True

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # A body never handed to the server (HEAD, an error after the handler) still frees its descriptor.
    __del__ = close


def send_file(req, resp, fd, *, etag, filename, content_type="application/octet-stream"):
    """Answer with the file behind ``fd`` (which this takes over and closes)."""
    try:
        size = os.fstat(fd).st_size
        resp.set_header("ETag", etag)
        resp.set_header("Accept-Ranges", "bytes")
        resp.set_header("Cache-Control", "private, no-cache")
        resp.set_header("Content-Disposition",
                        f"attachment; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}")
        if etag in [t.strip() for t in (req.get_header("If-None-Match") or "").split(",")]:
            resp.status = falcon.HTTP_304
            os.close(fd)
            return
        span = parse_range(req.get_header("Range"), size)
        if_range = req.get_header("If-Range")
        if span is not None and if_range is not None and if_range.strip() != etag:
            span = None  # the client's copy is outdated: send the whole file
        start, end = span if span is not None else (0, size - 1)
        if span is not None:
            resp.status = falcon.HTTP_206
            resp.set_header("Content-Range", f"bytes {start}-{end}/{size}")
    except BaseException:
        os.close(fd)
        raise
    resp.content_type = content_type
    resp.content_length = max(0, end - start + 1)
    resp.stream = FileRange(fd, start, max(0, end - start + 1))
