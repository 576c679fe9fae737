"""The job monitor: records job states and finds lost submissions.

Every ``poll_interval`` (and once at start-up) it reads the shared squeue
snapshot, stores the state of each unfinished job it sees, asks sacct about
jobs squeue has forgotten, and matches submissions whose sbatch answer was lost
(rows still "submitting") to Slurm's jobs by the ``--comment`` carrying their
submission id. Several daemons may run it at once: every write is idempotent.
"""

import datetime
import logging
import posixpath
import threading

import peewee

from ..models.base import utcnow
from ..models.jobs import LOST, SUBMITTED, SUBMITTING, Job
from ..slurm.client import COMMENT_PREFIX
from ..slurm.parse import FINAL_STATES
from ..slurm.runner import SlurmUnavailable

log = logging.getLogger("hpcportal.jobs")


class JobMonitor:
    name = "jobs"

    def __init__(self, slurm, database, *, interval, submit_timeout, recovery_grace, stopping=None):
        self._slurm = slurm
        self._database = database
        self._interval = interval
        # A submission younger than this may still be waiting for sbatch in a request thread.
        self._submit_timeout = submit_timeout
        self._grace = recovery_grace
        self._stop = threading.Event()
        self._thread = None
        self._last_ok = None
        self._last_error = None
        self.wake = threading.Event()

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="job-monitor", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self.wake.set()
        if self._thread:
            self._thread.join(10)

    def health(self):
        if self._last_error:
            return True, f"degraded: {self._last_error}"
        return True, "Slurm answered" if self._last_ok else "starting"

    def _loop(self):
        while not self._stop.is_set():
            try:
                with self._database.connection_context():
                    self.run_once()
                self._last_error = None
                self._last_ok = utcnow()
            except SlurmUnavailable as exc:
                self._last_error = exc.message
            except peewee.PeeweeException as exc:
                self._last_error = f"database: {exc}"
                log.warning("job monitor: database error: %s", exc)
            except Exception:  # keep monitoring whatever one round did
                log.exception("job monitor round failed")
            self.wake.wait(self._interval)
            self.wake.clear()

    def run_once(self):
        snapshot = self._slurm.snapshot(max_age=min(self._interval / 2, 5))
        self.recover(snapshot)
        self.record_states(snapshot)

    def recover(self, snapshot):
        now = utcnow()
        settled = now - datetime.timedelta(seconds=self._submit_timeout + 5)
        rows = list(Job.select().where((Job.status == SUBMITTING) & (Job.submitted_at <= settled)))
        for row in rows:
            found = snapshot.by_comment.get(COMMENT_PREFIX + row.submission_id)
            if found is not None:
                job_id = found["job_id"]
                with self._database.atomic():
                    Job.update(slurm_job_id=job_id, status=SUBMITTED, updated_at=now,
                               stdout_path=posixpath.join(row.job_dir, f"slurm-{job_id}.out"),
                               stderr_path=posixpath.join(row.job_dir, f"slurm-{job_id}.err")) \
                        .where((Job.id == row.id) & (Job.status == SUBMITTING)).execute()
                log.info("recovered job %s of submission %s (its sbatch answer was lost)",
                         job_id, row.submission_id)
            elif row.submitted_at <= now - datetime.timedelta(seconds=self._grace + self._submit_timeout):
                with self._database.atomic():
                    Job.update(status=LOST, updated_at=now) \
                        .where((Job.id == row.id) & (Job.status == SUBMITTING)).execute()
                log.warning("submission %s of %s never reached Slurm; given up", row.submission_id, row.user)

    def record_states(self, snapshot):
        rows = list(Job.select().where((Job.status == SUBMITTED) & ~(Job.state << list(FINAL_STATES))))
        forgotten = []
        for row in rows:
            live = snapshot.jobs.get(row.slurm_job_id)
            if live is None:
                forgotten.append(row)
                continue
            self._store(row, live)
        if forgotten:
            finished = self._slurm.finished([r.slurm_job_id for r in forgotten])
            for row in forgotten:
                if row.slurm_job_id in finished:
                    self._store(row, finished[row.slurm_job_id])

    def _store(self, row, seen):
        values = {"state": seen.get("state") or row.state, "reason": seen.get("reason"),
                  "exit_code": seen.get("exit_code"), "node_list": seen.get("nodes") or row.node_list,
                  "started_at": seen.get("started_at") or row.started_at,
                  "ended_at": seen.get("ended_at") if seen.get("state") in FINAL_STATES else None}
        if values["reason"] is not None:
            values["reason"] = values["reason"][:255]
        current = {k: getattr(row, k) for k in values}
        if current == values:
            return
        with self._database.atomic():
            Job.update(updated_at=utcnow(), **values).where(Job.id == row.id).execute()
