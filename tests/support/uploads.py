"""Helpers for the uploads tests: small chunk sizes, a chunk-protocol client, a tus upload cut off by a crash."""

import ctypes
import hashlib
import mmap
import os
import sqlite3
import tempfile
import time

# Small chunks keep the tests quick; the HTTP server's body limit follows
# max_chunk_size (plus 1 MiB), so bodies just above it still reach the app.
SMALL = {"uploads": {"min_chunk_size": "1KiB", "chunk_size": "64KiB", "max_chunk_size": "1MiB",
                     "free_space_reserve": 0}}


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def init(daemon, user, filename, size, **fields):
    return daemon.post("/api/v2/files/upload/init", user=user,
                       json={"filename": filename, "size": size, **fields})


def send_chunk(daemon, user, upload_id, index, body, multipart=False, **extra):
    if multipart:
        fields = {"upload_id": upload_id, "chunk_index": str(index), **extra}
        return daemon.post("/api/v2/files/upload/chunk", user=user, data=fields,
                           files={"chunk": ("blob", body, "application/octet-stream")})
    return daemon.post("/api/v2/files/upload/chunk", user=user, data=body,
                       params={"upload_id": upload_id, "chunk_index": index, **extra},
                       headers={"Content-Type": "application/octet-stream"})


def chunks_of(data, chunk_size):
    return [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]


def complete(daemon, user, upload_id):
    return daemon.post("/api/v2/files/upload/complete", user=user, json={"upload_id": upload_id})


def upload(daemon, user, data, filename="data.bin", chunk_size=4096, order=None, **fields):
    """A whole chunk-protocol upload; returns the completed file's JSON."""
    started = init(daemon, user, filename, len(data), chunk_size=chunk_size, **fields)
    assert started.status_code == 201, started.text
    info = started.json()
    pieces = chunks_of(data, info["chunk_size"])[:info["total_chunks"]]
    for index in (order or range(len(pieces))):
        answer = send_chunk(daemon, user, info["upload_id"], index, pieces[index])
        assert answer.status_code == 200, answer.text
    done = complete(daemon, user, info["upload_id"])
    assert done.status_code == 200, done.text
    return done.json()


def record_tus_cut_off(shared, upload_id):
    """Leave a tus upload in the (SQLite) database as a head that died after its last
    PATCH and before making the file would: offset at its length, ten minutes ago."""
    long_ago = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - 600))
    with sqlite3.connect(f"{shared.state}/portal.db") as conn:
        conn.execute("UPDATE upload SET tus_offset = size, updated_at = ? WHERE id = ?",
                     (long_ago, upload_id))


def random_bytes(size):
    return os.urandom(size)


def resident_pages(path):
    """(pages of ``path`` in the page cache, pages in all), by mincore(2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vector = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(byte & 1 for byte in vector), pages


def drops_cached_pages(folder):
    """Whether ``folder``'s filesystem lets pages go on advice (tmpfs does not)."""
    fd, path = tempfile.mkstemp(dir=folder)
    try:
        os.write(fd, b"x" * 65536)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 65536, os.POSIX_FADV_DONTNEED)
        return resident_pages(path)[0] == 0
    finally:
        os.close(fd)
        os.unlink(path)
