"""Resumable uploads (the dashboard's chunk protocol and tus 1.0.0) and the
finished files. Domain code only: no HTTP here.

``service.Uploads`` is the object other parts are given (the portal's
builder, ``hpcportal.portal``, makes it); ``janitor.UploadJanitor`` is the
clean-up service.

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
