"""Job events: what the job monitor saw, as the owner's job.state, job.finished and job.waiting.

``observe`` is one of the monitor's observers: it runs in the transaction that
stores the new state, so a state change and its events are stored together
(and, the monitor's update being conditional on the old state, once across heads).
"""

import datetime

from ..models.base import utcnow
from ..models.jobs import Job
from ..models.notifications import NotificationEvent
from . import messages


class JobEvents:
    def __init__(self, store, *, pending_warning, clock=utcnow):
        self._store = store
        self._pending_warning = pending_warning
        self._clock = clock

    def observe(self, previous, row):
        """Called with the old state and the job row holding the new one."""
        state = row.state
        data = self._data(row)
        self._store.record(
            row.user, "job.state", key=f"job:{row.submission_id}:state:{previous}>{state}",
            title=messages.job_title(row.slurm_job_id, row.name, state),
            message=f"Job {row.slurm_job_id} ({row.name}) " + messages.job_state(state, previous),
            data={**data, "previousState": previous,
                  "message": messages.job_state(state, previous)},
            job_id=row.slurm_job_id)
        if state in messages.FINISHED:
            elapsed = None
            if row.started_at and row.ended_at:
                elapsed = (row.ended_at - row.started_at).total_seconds()
            text = messages.job_finished(state, exit_code=row.exit_code, elapsed=elapsed,
                                         memory_asked=row.memory, time_asked=row.time_limit)
            self._store.record(
                row.user, "job.finished", key=f"job:{row.submission_id}:finished",
                title=messages.job_title(row.slurm_job_id, row.name, state),
                message=f"Job {row.slurm_job_id} ({row.name}) {text}.",
                data={**data, "message": text, "elapsed": None if elapsed is None else int(elapsed)},
                job_id=row.slurm_job_id)

    def check_waiting(self):
        """Records job.waiting for jobs pending past ``pending_warning`` for resources or a limit."""
        now = self._clock()
        cutoff = now - datetime.timedelta(seconds=self._pending_warning)
        warned = NotificationEvent.select(NotificationEvent.job_id).where(NotificationEvent.type == "job.waiting")
        rows = (Job.select().where((Job.state == "PENDING") & (Job.submitted_at <= cutoff)
                                   & ~(Job.slurm_job_id << warned)).limit(200))
        for row in rows:
            words = messages.waiting_reason(row.reason)
            if words is None:
                continue
            waited = (now - row.submitted_at).total_seconds()
            text = messages.job_waiting(waited, row.reason)
            self._store.record(
                row.user, "job.waiting", key=f"job:{row.submission_id}:waiting",
                title=f"Job {row.slurm_job_id} ({row.name}) is still waiting",
                message=f"Job {row.slurm_job_id} ({row.name}) {text}.",
                data={**self._data(row), "reason": row.reason, "reasonText": words, "message": text,
                      "waited": int(waited)},
                job_id=row.slurm_job_id)

    @staticmethod
    def _data(row):
        return {"jobId": row.slurm_job_id, "name": row.name, "state": row.state,
                "exitCode": row.exit_code}
