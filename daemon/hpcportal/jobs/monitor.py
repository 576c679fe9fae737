"""The job monitor: records job states and finds lost submissions.

Every ``poll_interval`` (and once at start-up) it reads the shared squeue
snapshot, stores the state of each unfinished job it sees, asks sacct about
jobs squeue has forgotten, and records the portal's jobs that Slurm has but the
database lacks (sbatch's answer was lost: timeout, crash, database failure),
found by the ``--comment`` carrying their submission id, from the submission
record kept in the job's folder. Several daemons may run it at once: the
submission id is unique, so a job is recorded once.
"""

import datetime
import logging
import os
import pwd
import re
import time

import peewee

from ..auth import User
from ..errors import UnsafePath
from ..models.base import utc_at, utcnow
from ..models.jobs import Job
from ..passes import PassLoop
from ..slurm.backend import COMMENT_PREFIX
from ..slurm.parse import FINAL_STATES
from ..slurm.runner import SlurmUnavailable

log = logging.getLogger("hpcportal.jobs")

# Seconds a job may be missing from squeue and sacct before it is no longer asked about.
GIVE_UP_AFTER = 3600
# Seconds between a job row's submitted_at (whole seconds, written before Slurm has the job)
# and the snapshot that must show the job before it counts as forgotten.
SUBMIT_MARGIN = 2


class JobMonitor:
    name = "jobs"

    def __init__(self, service, database, *, interval, margin=60, observers=()):
        """``margin``: what a pass may take beyond ``interval`` (its squeue and
        sacct calls, each up to Slurm's command timeout). ``observers``: called
        as ``observer(old_state, row)`` with the row holding the new state, inside
        the transaction that stores it, once across heads."""
        self._service = service
        self._observers = tuple(observers)
        self._backends = service.backends
        self._database = database
        self._interval = interval
        # Submission ids known to have a row: each squeue job is looked up once.
        self._known = set()
        self._missing = {}  # job id -> when it was first missing from squeue
        self._last_ok = None
        self._last_error = None
        # join_timeout: a squeue in flight must not hold up a stop.
        self._loop = PassLoop("job-monitor", self._pass, interval=interval, margin=margin, log=log,
                              failure_message="job monitor round failed", join_timeout=2)
        self.wake = self._loop.wake

    def start(self):
        self._loop.start()

    def stop(self):
        self._loop.stop()

    def health(self):
        return self._loop.health("Slurm answered" if self._last_ok else "starting", self._last_error)

    def _pass(self):
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

    def run_once(self):
        # One backend for the whole pass.
        slurm = self._backends.current()
        snapshot = slurm.snapshot(max_age=min(self._interval / 2, 5))
        self.recover(snapshot)
        self.record_states(snapshot, slurm)

    def recover(self, snapshot):
        """Record the portal's jobs Slurm has and the database lacks (lost sbatch answers)."""
        unknown = {comment[len(COMMENT_PREFIX):]: job for comment, job in snapshot.by_comment.items()
                   if comment[len(COMMENT_PREFIX):] not in self._known}
        if not unknown:
            return 0
        ids = list(unknown)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for row in Job.select(Job.submission_id).where(Job.submission_id << chunk):
                self._known.add(row.submission_id)
        recovered = 0
        for submission_id, job in unknown.items():
            if submission_id in self._known or not re.fullmatch(r"[0-9a-f]{32}", submission_id):
                continue
            if self._record_from_slurm(submission_id, job):
                recovered += 1
            self._known.add(submission_id)
        return recovered

    def _record_from_slurm(self, submission_id, job):
        # Who the job belongs to comes from Slurm, never from the folder the user can write.
        try:
            entry = pwd.getpwnam(job["user"] or "")
        except KeyError:
            return False
        if entry.pw_uid != job.get("uid", entry.pw_uid) or entry.pw_uid == 0:
            return False
        owner = User(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)
        job_dir = self._service.folders.path(owner.name, submission_id)
        if job.get("work_dir") and os.path.normpath(job["work_dir"]) != job_dir:
            return False
        try:
            record = self._service.read_record(owner, submission_id) or {}
        except UnsafePath as exc:  # the record only adds details: Slurm's word is enough
            log.warning("job %s of %s: submission record refused: %s", job["job_id"], owner.name, exc)
            record = {}
        record.update(submission_id=submission_id, user=owner.name, uid=owner.uid)
        record.setdefault("name", job.get("name") or "job")
        record.setdefault("partition", job.get("partition"))
        if self._service.record(record, job["job_id"], job_dir):
            log.info("recorded job %s of %s from its comment (submission %s; its sbatch answer was lost)",
                     job["job_id"], owner.name, submission_id)
            return True
        return False

    def record_states(self, snapshot, slurm):
        rows = list(Job.select().where(~(Job.state << list(FINAL_STATES))))
        # A job submitted about when the snapshot was asked for may be missing from it
        # without being forgotten: accounting is asked about it only on a later pass.
        asked = utc_at(snapshot.taken_at) - datetime.timedelta(seconds=SUBMIT_MARGIN)
        forgotten = []
        for row in rows:
            live = snapshot.jobs.get(row.slurm_job_id)
            if live is None:
                if row.submitted_at is not None and row.submitted_at < asked:
                    forgotten.append(row)
                continue
            self._missing.pop(row.slurm_job_id, None)
            self._store(row, live)
        # Jobs Slurm forgot that sacct does not know either (no accounting, no
        # jobcomp) keep their last state; they are not asked about forever.
        forgotten = [r for r in forgotten if self._missing.setdefault(r.slurm_job_id, time.monotonic())
                     > time.monotonic() - GIVE_UP_AFTER]
        if forgotten:
            finished = slurm.finished([r.slurm_job_id for r in forgotten])
            for row in forgotten:
                if row.slurm_job_id in finished:
                    self._store(row, finished[row.slurm_job_id])
                    self._missing.pop(row.slurm_job_id, None)

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
            # Conditional on the state read: of two heads that saw one change, one stores it.
            stored = Job.update(updated_at=utcnow(), **values).where(
                (Job.id == row.id) & (Job.state == row.state)).execute()
            if stored and values["state"] != row.state and self._observers:
                previous = row.state
                for name, value in values.items():
                    setattr(row, name, value)
                for observer in self._observers:
                    observer(previous, row)
