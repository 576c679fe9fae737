"""What the portal asks of Slurm, whichever way it asks: ``SlurmBackend``.

Two backends implement it: the commands (``client.CommandBackend``: sbatch,
squeue, ... run as the user) and slurmrestd (``restbackend.RestBackend``). Both
share the caches here: the snapshot of every job (one squeue, or one REST jobs
call, every ``squeue_interval`` for all requests, single flight) and the
partition list. Each call on a user's behalf runs as that user (the user's
uid for a command, the user's token for REST), so Slurm checks what they may do.
"""

import threading
import time

from .runner import SlurmUnavailable

COMMENT_PREFIX = "hpcportal:"
# How far past its ``max_age`` a snapshot may still answer a request while it is refreshed.
STALE_GRACE = 30.0
# A refresh that takes longer than this is not waited for by a request that has a recent snapshot.
SLOW_REFRESH = 0.25


class Snapshot:
    """Every job Slurm shows, by id; ``taken``: the backend's (monotonic) time it was
    asked for, ``taken_at``: the same moment as a Unix time."""

    def __init__(self, jobs, taken, taken_at=None):
        self.jobs = {job["job_id"]: job for job in jobs}
        self.taken = taken
        self.taken_at = time.time() if taken_at is None else taken_at
        self.by_comment = {job["comment"]: job for job in jobs if job["comment"].startswith(COMMENT_PREFIX)}


class SlurmBackend:
    """The calls: ``submit``, ``cancel``, ``snapshot`` (with ``find_by_submission``),
    ``finished``, ``partitions``, ``associations``. A subclass supplies ``name`` and
    ``_fetch_jobs``, ``_fetch_partitions``, ``submit``, ``cancel``, ``finished``
    and ``associations``."""

    name = None

    def __init__(self, *, squeue_interval=3.0, partition_cache=30.0, clock=time.monotonic):
        self._squeue_interval = squeue_interval
        self._partition_cache = partition_cache
        self._clock = clock
        self._snapshot = None
        self._failure = None  # (SlurmUnavailable, when) of the last snapshot that failed
        self._snapshot_lock = threading.Lock()
        self._refresh_seconds = 0.0  # how long the last refresh took
        self._partitions = None
        self._partitions_taken = None
        self._partitions_lock = threading.Lock()

    # -- what each backend does --------------------------------------------------

    def _fetch_jobs(self):
        """Every job Slurm still shows, as ``parse.job_fields`` gives them."""
        raise NotImplementedError

    def _fetch_partitions(self):
        """The partitions, as ``parse.parse_sinfo`` gives them."""
        raise NotImplementedError

    def submit(self, user, spec, script, meanwhile=None):
        """Submits the job ``spec`` (a ``JobSpec`` with the portal's options) as ``user``;
        ``script`` is its batch script. Slurm's job id.

        ``meanwhile()`` is called once Slurm has the job to work on and before its
        answer is read: work that does not need the job id runs while Slurm works
        (it must not raise: the job may exist by then)."""
        raise NotImplementedError

    def cancel(self, user, job_id):
        raise NotImplementedError

    def finished(self, job_ids):
        """Final states of jobs the snapshot no longer shows, by job id (may be partial)."""
        raise NotImplementedError

    def associations(self, user):
        """``(associations, note)``: the user's accounts and QOS."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------

    def snapshot(self, max_age=None, wait=True):
        """The shared snapshot, refreshed when older than ``max_age`` seconds at the
        moment of asking. One thread refreshes while the others wait for its answer
        (single flight), so a burst of requests costs one call to Slurm.

        ``wait=False`` (a request answering a user): when refreshing is slow (one is under
        way, or the last took over ``SLOW_REFRESH`` seconds), a snapshot at most
        ``STALE_GRACE`` seconds past ``max_age`` answers at once, and a refresh starts
        behind it. With thousands of jobs a refresh takes seconds, and every job list
        waited for one; a quick refresh is still waited for, so a list is up to date."""
        max_age = self._squeue_interval if max_age is None else max_age
        asked = self._clock()
        current = self._snapshot
        if current is not None and asked - current.taken <= max_age:
            return current
        slow = self._snapshot_lock.locked() or self._refresh_seconds > SLOW_REFRESH
        if not wait and slow and current is not None and asked - current.taken <= max_age + STALE_GRACE:
            failure = self._failure
            if failure is not None and self._clock() - failure[1] <= self._squeue_interval:
                raise failure[0]  # the last refresh failed: an outage is not hidden behind old news
            self._refresh_behind()
            return current
        with self._snapshot_lock:
            current = self._snapshot
            if current is not None and asked - current.taken <= max_age:
                return current  # the refresh this caller waited for
            failure = self._failure
            if failure is not None and self._clock() - failure[1] <= self._squeue_interval:
                # A controller that just failed to answer is not asked again at once:
                # waiting requests get the same answer instead of queueing for a timeout.
                raise failure[0]
            started, started_at = self._clock(), time.time()
            try:
                snapshot = Snapshot(self._fetch_jobs(), started, started_at)
            except SlurmUnavailable as exc:
                self._failure = (exc, self._clock())
                raise
            self._failure = None
            self._refresh_seconds = self._clock() - started
            self._snapshot = snapshot
            return snapshot

    def _refresh_behind(self):
        if not self._snapshot_lock.locked():  # else one is under way
            threading.Thread(target=self._refresh_quietly, name="snapshot-refresh", daemon=True).start()

    def _refresh_quietly(self):
        try:
            self.snapshot()
        except SlurmUnavailable:
            pass  # kept as the last failure: the next caller that waits gets it

    def snapshot_age(self):
        current = self._snapshot
        return None if current is None else self._clock() - current.taken

    def invalidate(self):
        self._snapshot = None

    def find_by_submission(self, submission_id):
        """The job Slurm knows with our comment, from a fresh snapshot, or None."""
        return self.snapshot(max_age=0).by_comment.get(COMMENT_PREFIX + submission_id)

    def partitions(self):
        """Partitions (cached for ``partition_cache`` seconds)."""
        now = self._clock()
        if self._partitions is not None and now - self._partitions_taken <= self._partition_cache:
            return self._partitions
        with self._partitions_lock:
            if self._partitions is not None and self._clock() - self._partitions_taken <= self._partition_cache:
                return self._partitions
            self._partitions = self._fetch_partitions()
            self._partitions_taken = self._clock()
            return self._partitions
