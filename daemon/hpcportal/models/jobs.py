"""Jobs submitted through the portal: one row per job Slurm accepted.

A row is written once Slurm has given its job id. ``submission_id`` is also in
the job's ``--comment``: when sbatch's answer is lost, the job monitor finds the
job by it and writes the row then (unique, so a job is never recorded twice).
A refused submission writes no row.
"""

import peewee

from .base import BaseModel, JSONField, utcnow

class Job(BaseModel):
    submission_id = peewee.CharField(max_length=32, unique=True)
    slurm_job_id = peewee.CharField(max_length=32, index=True)
    user = peewee.CharField(max_length=64, index=True)
    uid = peewee.IntegerField()
    name = peewee.CharField(max_length=128)
    partition = peewee.CharField(max_length=64, null=True)
    nodes = peewee.IntegerField(null=True)
    cpus = peewee.IntegerField(null=True)
    memory = peewee.CharField(max_length=32, null=True)
    time_limit = peewee.CharField(max_length=32, null=True)
    account = peewee.CharField(max_length=64, null=True)
    qos = peewee.CharField(max_length=64, null=True)
    gpus = peewee.IntegerField(null=True)
    image = JSONField(null=True)
    template_id = peewee.CharField(max_length=255, null=True)
    template_version = peewee.CharField(max_length=64, null=True)
    parameters = JSONField(null=True)
    files = JSONField(null=True)
    client_job_id = peewee.CharField(max_length=64, null=True)  # the dashboard's temporary id
    # What the submit asked (Slurm forgets a dependency once it is met; the graph does not).
    dependency = peewee.CharField(max_length=1024, null=True)
    array = peewee.CharField(max_length=1024, null=True)
    job_dir = peewee.TextField()
    script_path = peewee.TextField()
    stdout_path = peewee.TextField(null=True)
    stderr_path = peewee.TextField(null=True)
    # Last state seen (squeue, then sacct): what the list shows once Slurm forgets the job.
    state = peewee.CharField(max_length=32, default="PENDING", index=True)
    reason = peewee.CharField(max_length=255, null=True)
    exit_code = peewee.CharField(max_length=16, null=True)
    node_list = peewee.CharField(max_length=255, null=True)
    submitted_at = peewee.DateTimeField(default=utcnow, index=True)
    started_at = peewee.DateTimeField(null=True)
    ended_at = peewee.DateTimeField(null=True)
    updated_at = peewee.DateTimeField(default=utcnow)


MODELS = [Job]
