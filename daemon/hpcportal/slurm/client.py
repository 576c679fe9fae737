"""The Slurm operations the portal needs, on top of ``SlurmRunner``.

State queries (squeue, sinfo) run as the daemon (root on a head node, so
``PrivateData`` hides nothing) and are shared by every request through short
caches: many users refreshing their job lists cost one squeue call every
``squeue_interval`` seconds, not one per request. Actions (sbatch, scancel)
run as the user.
"""

import logging
import re
import threading
import time

from .parse import parse_sacct_completion, parse_sinfo, parse_squeue_json
from .runner import SlurmRefused, SlurmUnavailable

log = logging.getLogger("hpcportal.slurm")

COMMENT_PREFIX = "hpcportal:"
_JOB_ID = re.compile(r"^(\d+)(?:;\S+)?$")


class Snapshot:
    """One squeue answer: jobs by id and the monotonic time it was taken."""

    def __init__(self, jobs, taken):
        self.jobs = {job["job_id"]: job for job in jobs}
        self.taken = taken
        self.by_comment = {job["comment"]: job for job in jobs if job["comment"].startswith(COMMENT_PREFIX)}


class Slurm:
    def __init__(self, runner, *, squeue_interval=3.0, partition_cache=30.0, clock=time.monotonic):
        self.runner = runner
        self._squeue_interval = squeue_interval
        self._partition_cache = partition_cache
        self._clock = clock
        self._snapshot = None
        self._failure = None  # (SlurmUnavailable, when) of the last squeue that failed
        self._snapshot_lock = threading.Lock()
        self._partitions = None
        self._partitions_taken = None
        self._partitions_lock = threading.Lock()

    # -- jobs ------------------------------------------------------------------

    def snapshot(self, max_age=None):
        """The shared squeue snapshot, refreshed when older than ``max_age``.

        One thread refreshes while the others wait for its answer (single
        flight), so a burst of requests costs one squeue call."""
        max_age = self._squeue_interval if max_age is None else max_age
        current = self._snapshot
        if current is not None and self._clock() - current.taken <= max_age:
            return current
        with self._snapshot_lock:
            current = self._snapshot
            if current is not None and self._clock() - current.taken <= max_age:
                return current
            failure = self._failure
            if failure is not None and self._clock() - failure[1] <= self._squeue_interval:
                # A controller that just failed to answer is not asked again at once:
                # waiting requests get the same answer instead of queueing for squeue's timeout.
                raise failure[0]
            started = self._clock()
            try:
                answer = self.runner.run("squeue", ["--json", "--all", "-t", "all"])
                snapshot = Snapshot(parse_squeue_json(answer.stdout), started)
            except SlurmUnavailable as exc:
                self._failure = (exc, self._clock())
                raise
            self._failure = None
            self._snapshot = snapshot
            return snapshot

    def snapshot_age(self):
        current = self._snapshot
        return None if current is None else self._clock() - current.taken

    def invalidate(self):
        self._snapshot = None

    def find_by_submission(self, submission_id):
        """The job Slurm knows with our ``--comment``, from a fresh squeue, or None."""
        return self.snapshot(max_age=0).by_comment.get(COMMENT_PREFIX + submission_id)

    def submit(self, user, script_path, cwd):
        """sbatch as ``user``; Slurm's job id. The options are all in the script."""
        answer = self.runner.run("sbatch", ["--parsable", script_path], user=user, cwd=cwd)
        lines = [line.strip() for line in answer.stdout.splitlines() if line.strip()]
        match = _JOB_ID.match(lines[-1]) if lines else None
        if not match:
            raise SlurmRefused(f"sbatch gave no job id: {answer.stdout.strip()[:200]!r}")
        return match.group(1)

    def cancel(self, user, job_id):
        self.runner.run("scancel", [str(job_id)], user=user)
        self.invalidate()

    def finished(self, job_ids):
        """Final states of jobs squeue no longer shows: accounting, else the jobcomp file."""
        if not job_ids:
            return {}
        fields = ["-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State,ExitCode,Start,End,NodeList"]
        answer = self.runner.run("sacct", fields, check=False)
        if answer.returncode != 0 and "accounting storage is disabled" in (answer.stderr or "").lower():
            answer = self.runner.run("sacct", ["-c", *fields], check=False)
        if answer.returncode != 0:
            log.info("sacct could not tell finished jobs: %s", (answer.stderr or "").strip()[:200])
            return {}
        return parse_sacct_completion(answer.stdout)

    # -- partitions and associations -------------------------------------------------

    def partitions(self):
        """Partitions (cached for ``partition_cache`` seconds)."""
        now = self._clock()
        if self._partitions is not None and now - self._partitions_taken <= self._partition_cache:
            return self._partitions
        with self._partitions_lock:
            if self._partitions is not None and self._clock() - self._partitions_taken <= self._partition_cache:
                return self._partitions
            answer = self.runner.run("sinfo", ["-h", "-a", "-o", "%P|%a|%D|%c|%m|%l|%G|%t"])
            self._partitions = parse_sinfo(answer.stdout)
            self._partitions_taken = self._clock()
            return self._partitions

    def associations(self, user):
        """``(associations, note)``: the user's accounts and QOS from sacctmgr."""
        answer = self.runner.run(
            "sacctmgr", ["-n", "-P", "show", "associations", f"user={user.name}",
                         "format=Cluster,Account,Partition,QOS,DefaultQOS"], check=False)
        if answer.returncode != 0:
            message = (answer.stderr or answer.stdout or "").strip()
            log.info("sacctmgr: %s", message[:200])
            return [], "Slurm accounting is not configured on this cluster: there are no accounts or QOS to choose."
        out = []
        for line in answer.stdout.splitlines():
            parts = line.split("|")
            if len(parts) < 5:
                continue
            cluster, account, partition, qos, default_qos = parts[:5]
            out.append({"cluster": cluster, "account": account, "partition": partition or None,
                        "qos": [q for q in qos.split(",") if q], "default_qos": default_qos or None})
        return out, None if out else "You have no Slurm associations; jobs run without an account."

