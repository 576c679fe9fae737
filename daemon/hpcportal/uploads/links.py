"""Which submitted job a finished file belongs to: Slurm's job id on its row.

The jobs area calls these once Slurm has accepted a job, so ``GET
/api/v2/files`` can say which job a file was uploaded for or first used by.
"""

from ..models.uploads import UploadedFile

# Rows matched per statement: keeps the IN list well inside every backend's limits.
BATCH = 500


class JobLinks:
    """Mixed into ``Uploads``: the part of it the jobs area writes through."""

    def link_job(self, user_name, job_id, slurm_job_id):
        """Records the Slurm job id on the user's files uploaded with the
        dashboard's temporary ``job_id``; the number of files linked.

        These files were uploaded for this very job, so it replaces a job that
        used one of them earlier."""
        return (UploadedFile.update(slurm_job_id=str(slurm_job_id))
                .where((UploadedFile.user == user_name) & (UploadedFile.job_id == job_id))
                .execute())

    def link_files(self, user_name, storage_paths, slurm_job_id):
        """Records the Slurm job id on the user's files at ``storage_paths`` (the
        job's inputs) that no job has claimed yet; the number of files linked.

        The first job keeps a file: a later job reusing an input does not
        change what the file was made for."""
        paths = sorted({p for p in storage_paths if isinstance(p, str) and p})
        linked = 0
        for start in range(0, len(paths), BATCH):
            linked += (UploadedFile.update(slurm_job_id=str(slurm_job_id))
                       .where((UploadedFile.user == user_name)
                              & UploadedFile.storage_path.in_(paths[start:start + BATCH])
                              & UploadedFile.slurm_job_id.is_null())
                       .execute())
        return linked
