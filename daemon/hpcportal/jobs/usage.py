"""Job usage: samples of running jobs over time, efficiency once they end, and a user's
usage per partition.

``UsageSampler`` (a background service) takes one sample of every running job each
``jobs.usage_interval``: one ``sstat`` per hundred jobs, as root, on the one head
that holds the ``usage`` lease (renewed each pass; a head that dies lets it run
out and another head takes over). Samples live in the shared database for
``jobs.usage_retention``. ``UsageReport`` answers the usage endpoints: samples,
what was requested, what was used and, once the job has ended, its efficiency as
``seff`` computes it from accounting.
"""

import datetime
import logging
import socket
import uuid

import peewee

from ..errors import PermissionDenied
from ..models.base import isoformat, utcnow
from ..models.usage import JobUsageSample, ServiceLease
from ..passes import PassLoop
from ..slurm.accounting import AccountingNotConfigured, memory
from ..slurm.parse import FINAL_STATES
from ..slurm.runner import SlurmRefused, SlurmUnavailable
from .listing import _TRES_GPUS, _TRES_MEMORY

log = logging.getLogger("hpcportal.jobs")

LEASE = "usage"
NOT_CONFIGURED = ("Slurm accounting is not configured on this cluster (no slurmdbd): the figures are "
                  "what the controller still knows of recent jobs.")
NO_COMMANDS = ("This head reaches Slurm through slurmrestd only, which (in Slurm 22.05) has no step "
               "statistics: running jobs are not sampled here.")


class UsageSampler:
    name = "usage"

    def __init__(self, backends, accounting, database, *, interval, max_jobs, retention, margin=60):
        """``backends``: the ``BackendChoice`` whose current backend has the shared snapshot."""
        self._backends = backends
        self._accounting = accounting
        self._database = database
        self._interval = interval
        self._max_jobs = max_jobs
        self._retention = retention
        self._holder = f"{socket.gethostname()}#{uuid.uuid4().hex[:12]}"
        # A dead head's lease runs out after a few of its passes.
        self._lease_for = max(3 * interval, 30)
        self._previous = {}  # job id -> (time, cpu seconds) of its last sample
        self._last_error = None
        self.holding = False
        self._loop = PassLoop("usage-sampler", self._pass, interval=interval, margin=margin, log=log,
                              failure_message="usage sampling pass failed", join_timeout=2)

    def start(self):
        self._loop.start()

    def stop(self):
        self._loop.stop()

    def health(self):
        return self._loop.health("sampling" if self.holding else "standing by (another head samples)",
                                 self._last_error)

    def _pass(self):
        try:
            with self._database.connection_context():
                self.run_once()
            self._last_error = None
        except (SlurmRefused, SlurmUnavailable, AccountingNotConfigured) as exc:
            self._last_error = str(getattr(exc, "message", exc))
        except peewee.PeeweeException as exc:
            self._last_error = f"database: {exc}"

    def _take_lease(self, now):
        expires = now + datetime.timedelta(seconds=self._lease_for)
        taken = (ServiceLease.update(holder=self._holder, expires_at=expires)
                 .where((ServiceLease.name == LEASE)
                        & ((ServiceLease.holder == self._holder) | (ServiceLease.expires_at < now)))
                 .execute())
        if not taken:
            try:
                with self._database.atomic():
                    ServiceLease.create(name=LEASE, holder=self._holder, expires_at=expires)
                taken = 1
            except peewee.IntegrityError:
                taken = 0
        self.holding = bool(taken)
        return self.holding

    def run_once(self):
        """One pass: the lease, then one sample of each running job; the number taken."""
        now = utcnow()
        if not self._take_lease(now):
            self._previous.clear()
            return 0
        JobUsageSample.delete().where(
            JobUsageSample.taken_at < now - datetime.timedelta(seconds=self._retention)).execute()
        snapshot = self._backends.current().snapshot(max_age=min(self._interval / 2, 5))
        running = sorted((job for job in snapshot.jobs.values() if job["state"] == "RUNNING"),
                         key=lambda job: int(job["job_id"]))[:self._max_jobs]
        if not running:
            self._previous.clear()
            return 0
        usage = self._accounting.step_usage([job["job_id"] for job in running])
        rows = []
        for job in running:
            used = usage.get(job["job_id"])
            if used is None:
                continue
            since, before = self._previous.get(job["job_id"], (job.get("started_at"), 0.0))
            seconds = (now - since).total_seconds() if since else 0
            percent = max(0.0, (used["cpu_seconds"] - before) / seconds * 100) if seconds > 0 else None
            rows.append({"slurm_job_id": job["job_id"], "taken_at": now, "cpu_seconds": used["cpu_seconds"],
                         "cpu_percent": percent, "memory_bytes": used["memory_bytes"]})
        self._previous = {row["slurm_job_id"]: (now, row["cpu_seconds"]) for row in rows}
        if rows:
            with self._database.atomic():
                JobUsageSample.insert_many(rows).execute()
        return len(rows)


class UsageReport:
    def __init__(self, service, accounting, *, sampling):
        """``sampling``: whether this cluster's heads can sample (Slurm commands, not REST only)."""
        self._service = service
        self._accounting = accounting
        self._sampling = sampling

    def job(self, user, job_id):
        row = self._service.row_for(user, job_id)
        live = self._service.live_state(row) or self._fresh(row.slurm_job_id) or {}
        state = live.get("state") or row.state
        samples = list(JobUsageSample.select().where(JobUsageSample.slurm_job_id == row.slurm_job_id)
                       .order_by(JobUsageSample.taken_at))
        answer = {"jobId": row.slurm_job_id, "state": state,
                  "samples": [{"time": isoformat(s.taken_at), "cpuPercent": s.cpu_percent,
                               "cpuSeconds": s.cpu_seconds, "memoryBytes": s.memory_bytes} for s in samples],
                  "efficiency": None}
        notes = []
        if not self._sampling:
            notes.append(NO_COMMANDS)
        try:
            record = self._accounting.job_record(row.slurm_job_id)
        except AccountingNotConfigured:
            record = None
            notes.append(NOT_CONFIGURED)
        except (SlurmRefused, SlurmUnavailable) as exc:
            record = None
            notes.append(f"Slurm's accounting did not answer: {exc.message}")
        answer["requested"] = _requested(record, live, row)
        answer["used"] = _used(record, live, samples, state)
        if record and state in FINAL_STATES:
            answer["efficiency"] = _efficiency(record, answer["requested"])
        if notes:
            answer["note"] = " ".join(notes)
        return answer

    def _fresh(self, job_id):
        """The job in a fresh snapshot: the shared one may predate a job submitted just now."""
        try:
            return self._service.backends.current().snapshot(max_age=0).jobs.get(job_id)
        except SlurmUnavailable:
            return None

    def user(self, user, *, days, who=None, everyone=False):
        if (who not in (None, user.name) or everyone) and not user.admin:
            raise PermissionDenied("Only administrators may see other users' usage.", code="admin_only")
        name = None if everyone else (who or user.name)
        since = utcnow() - datetime.timedelta(days=days)
        answer = {"days": days, "user": name}
        try:
            partitions = self._accounting.usage_by_partition(since, user=name)
            answer["accounting"] = True
        except AccountingNotConfigured:
            partitions = self._from_controller(since, name)
            answer.update(accounting=False, note=NOT_CONFIGURED)
        items = [_figures({"partition": name}, entry) for name, entry in sorted(partitions.items())]
        total = {"jobs": 0, "cpu_seconds": 0, "gpu_seconds": 0}
        for entry in partitions.values():
            for key in total:
                total[key] += entry[key]
        answer.update(partitions=items, total=_figures({}, total))
        return answer

    def _from_controller(self, since, name):
        try:
            jobs = self._service.backends.current().snapshot(wait=False).jobs.values()
        except SlurmUnavailable:
            return {}
        now = utcnow()
        partitions = {}
        for job in jobs:
            started = job.get("started_at")
            if (name is not None and job.get("user") != name) or not started or job.get("state") == "PENDING":
                continue
            end = job.get("ended_at") if job.get("state") in FINAL_STATES else now
            if not end or end < since:
                continue
            elapsed = max(0, int((end - max(started, since)).total_seconds()))
            gpus = _TRES_GPUS.search(job.get("tres") or "")
            entry = partitions.setdefault(job.get("partition") or "(none)",
                                          {"jobs": 0, "cpu_seconds": 0, "gpu_seconds": 0})
            entry["jobs"] += 1
            entry["cpu_seconds"] += (job.get("cpus") or 0) * elapsed
            entry["gpu_seconds"] += (int(gpus.group(1)) if gpus else 0) * elapsed
        return partitions


def _figures(base, entry):
    return {**base, "jobs": entry["jobs"], "cpuSeconds": entry["cpu_seconds"],
            "cpuHours": entry["cpu_seconds"] / 3600, "gpuHours": entry["gpu_seconds"] / 3600}


def _requested(record, live, row):
    mem = _TRES_MEMORY.search(live.get("tres") or "")
    limit = live.get("time_limit")
    known = {"cpus": live.get("cpus") or row.cpus,
             "memoryBytes": memory(mem.group(1)) if mem else memory(row.memory),
             "timeSeconds": limit * 60 if isinstance(limit, int) else None}
    if not record:
        return known
    # Accounting's record of a job that started a moment ago may lack what slurmdbd has not
    # been told yet (0 CPUs, no limits): the controller's figures stand in for those.
    return {"cpus": record["alloc_cpus"] or record["cpus"] or known["cpus"],
            "memoryBytes": record["memory_bytes"] or known["memoryBytes"],
            "timeSeconds": record["time_seconds"] or known["timeSeconds"]}


def _used(record, live, samples, state):
    if record and state in FINAL_STATES:
        return {"cpuSeconds": record["cpu_seconds"], "maxMemoryBytes": record["max_memory_bytes"],
                "elapsedSeconds": record["elapsed_seconds"]}
    started = live.get("started_at")
    return {"cpuSeconds": samples[-1].cpu_seconds if samples else None,
            "maxMemoryBytes": max((s.memory_bytes for s in samples), default=None),
            "elapsedSeconds": int((utcnow() - started).total_seconds()) if started else None}


def _efficiency(record, requested):
    """seff's ratios: CPU time over elapsed time times allocated CPUs, peak memory over the
    memory requested, elapsed time over the time limit (None where a figure is missing)."""
    def ratio(part, whole):
        return part / whole if part is not None and whole else None
    elapsed, cpus = record["elapsed_seconds"], requested["cpus"]
    return {"cpu": ratio(record["cpu_seconds"], (elapsed or 0) * (cpus or 0)),
            "memory": ratio(record["max_memory_bytes"], requested["memoryBytes"]),
            "time": ratio(elapsed, requested["timeSeconds"])}
