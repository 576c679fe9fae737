"""Upload state: unfinished uploads, their received chunks, and finished files.

An unfinished upload's bytes live in one partial file on the shared
filesystem; these rows say which parts of it are acknowledged. Each received
chunk of the chunk protocol is its own ``UploadChunk`` row, inserted once, so
chunks of one upload arriving at different head nodes at the same moment
never race on a read-modify-write of a shared list. A tus upload is
sequential by protocol; its acknowledged length is ``Upload.tus_offset``, moved
forward with a compare-and-set update.
"""

import unicodedata

import peewee

from .base import BaseModel, JSONField, utcnow


def name_key(name):
    """What a name search and a sort by name compare: the NFC name, case-folded
    by Python, so every database backend matches and orders names alike."""
    return unicodedata.normalize("NFC", name).casefold()


class Upload(BaseModel):
    id = peewee.CharField(max_length=32, primary_key=True)
    user = peewee.CharField(max_length=64, index=True)
    uid = peewee.IntegerField()
    gid = peewee.IntegerField()
    protocol = peewee.CharField(max_length=8)  # "chunk" or "tus"
    filename = peewee.CharField(max_length=255)
    job_id = peewee.CharField(max_length=64, null=True)
    size = peewee.BigIntegerField()
    chunk_size = peewee.BigIntegerField()
    total_chunks = peewee.IntegerField()
    sha256 = peewee.CharField(max_length=64, null=True)  # expected, when the client gave one
    tus_offset = peewee.BigIntegerField(default=0)  # tus only
    metadata = JSONField(null=True)  # tus Upload-Metadata, echoed on HEAD
    # "active", or "completing" while one request hashes and moves the file;
    # ``lease_until`` lets another head take over from a crashed completion.
    state = peewee.CharField(max_length=16, default="active", index=True)
    lease_until = peewee.DateTimeField(null=True)
    # "<host>/<address>:<port>#<process>": a restarted daemon frees the leases its
    # killed predecessor (same host and address, another process) left behind.
    lease_holder = peewee.CharField(max_length=255, null=True)
    final_name = peewee.CharField(max_length=255, null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)
    expires_at = peewee.DateTimeField(index=True)


class UploadChunk(BaseModel):
    upload = peewee.ForeignKeyField(Upload, backref="chunks", on_delete="CASCADE")
    chunk_index = peewee.IntegerField()
    size = peewee.BigIntegerField()
    # New for every write of the chunk: a head that hashed the chunk as it
    # arrived can tell at completion whether it was re-sent since.
    token = peewee.CharField(max_length=16)
    received_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("upload", "chunk_index"), True),)


class UploadedFile(BaseModel):
    id = peewee.CharField(max_length=32, primary_key=True)
    upload_id = peewee.CharField(max_length=32, index=True)
    user = peewee.CharField(max_length=64, index=True)
    filename = peewee.CharField(max_length=255)
    # ``name_key(filename)``; null only on rows older than the column until migration 18 fills it.
    name_key = peewee.TextField(null=True)
    job_id = peewee.CharField(max_length=64, null=True, index=True)
    # Set by the jobs area once the job with the temporary ``job_id`` is submitted.
    slurm_job_id = peewee.CharField(max_length=64, null=True, index=True)
    size = peewee.BigIntegerField()
    sha256 = peewee.CharField(max_length=64)
    file_type = peewee.CharField(max_length=16, index=True)
    mime_type = peewee.CharField(max_length=255)
    storage_path = peewee.TextField()
    # Paths can be longer than an indexable column: the unique key is their hash.
    storage_path_hash = peewee.CharField(max_length=64, unique=True)
    created_at = peewee.DateTimeField(default=utcnow, index=True)


MODELS = [Upload, UploadChunk, UploadedFile]
