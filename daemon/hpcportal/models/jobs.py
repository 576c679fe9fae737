"""Jobs submitted through the portal.

A row is written *before* sbatch runs (``status`` "submitting", no Slurm id):
if sbatch's answer is lost, the row's ``submission_id`` (also given to Slurm in
``--comment``) is how the job is found again. A refused or failed submission
deletes its row, so no row ever claims a job Slurm does not have.
"""

import peewee

from .base import BaseModel, JSONField, utcnow

SUBMITTING = "submitting"  # sbatch is running or its answer was lost
SUBMITTED = "submitted"  # Slurm has it: slurm_job_id is set
LOST = "lost"  # sbatch's answer was lost and Slurm never had the job


class Job(BaseModel):
    submission_id = peewee.CharField(max_length=32, unique=True)
    slurm_job_id = peewee.CharField(max_length=32, null=True, index=True)
    status = peewee.CharField(max_length=16, default=SUBMITTING, index=True)
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
