"""Resumable uploads (the dashboard's chunk protocol and tus 1.0.0) and the
finished files. Domain code only: no HTTP here.

``build(portal)`` makes the ``Uploads`` object registered as
``portal.areas["uploads"]`` and adds the clean-up service to
``portal.services``.

For other areas (the jobs area uses these; each returns plain dicts shaped
like the ``complete`` answer: ``file_id``, ``filename``, ``size``,
``sha256``, ``file_type``, ``mime_type``, ``storage_path``, ``job_id``,
``slurm_job_id``, ``created_at``):

- ``uploads.file_for_user(user_name, file_id)`` -> dict or None
- ``uploads.file_by_storage_path(user_name, storage_path)`` -> dict or None
  (exact absolute path as answered by ``complete``)
- ``uploads.files_for_job(user_name, job_id)`` -> list of dicts uploaded with
  that (temporary) job id
- ``uploads.link_job(user_name, job_id, slurm_job_id)`` -> number of files
  linked: records Slurm's job id on the user's files uploaded with the
  dashboard's temporary ``job_id``. Files do not move.
- ``uploads.link_files(user_name, storage_paths, slurm_job_id)`` -> number of
  files linked: records Slurm's job id on the user's files a job was given
  as inputs, where no job is recorded yet.

A user only ever finds their own rows: another user's ids give None.
"""

import socket

from .classify import Classifier
from .janitor import UploadJanitor
from .metrics import UploadMetrics
from .reservations import Reservations
from .service import Uploads
from .storage import Storage

__all__ = ["Uploads", "build"]


def build(portal):
    config = portal.config
    server = config.server
    listener = f"{socket.gethostname()}/{server.host}:{server.port}" if server.port else None
    storage = Storage(config.paths.uploads)
    reservations = Reservations(config.uploads, portal.database, storage.free_bytes,
                                lock_timeout=config.database.busy_timeout)
    uploads = Uploads(config.uploads, portal.database, storage, Classifier(),
                      UploadMetrics(portal.registry), reservations, clock=portal.clock,
                      listener=listener)
    portal.areas["uploads"] = uploads
    portal.services.append(UploadJanitor(uploads, portal.database, config.uploads.cleanup_interval))
    return uploads
