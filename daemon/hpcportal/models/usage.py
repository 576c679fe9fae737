"""Job usage over time: samples of running jobs' CPU and memory, and the lease that
makes one head (whichever holds it) take them, so several heads never sample twice."""

import peewee

from .base import BaseModel


class JobUsageSample(BaseModel):
    slurm_job_id = peewee.CharField(max_length=32)
    taken_at = peewee.DateTimeField(index=True)
    # CPU time of the job's steps so far (sstat); the percentage is over the last interval.
    cpu_seconds = peewee.FloatField()
    cpu_percent = peewee.FloatField(null=True)
    memory_bytes = peewee.BigIntegerField()

    class Meta:
        indexes = ((("slurm_job_id", "taken_at"), False),)


class ServiceLease(BaseModel):
    """One row per background duty only one head may do at a time; a head that dies
    stops renewing, and another takes the duty once ``expires_at`` has passed."""

    name = peewee.CharField(max_length=64, primary_key=True)
    holder = peewee.CharField(max_length=255)
    expires_at = peewee.DateTimeField()


MODELS = [JobUsageSample, ServiceLease]
