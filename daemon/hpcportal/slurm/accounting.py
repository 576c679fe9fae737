"""What Slurm's accounting says of jobs: live step statistics (``sstat``) and the
records of finished jobs (``sacct``), run as the daemon (root on a head node).

Without slurmdbd, ``sacct`` answers "accounting storage is disabled" and
``sstat`` has nothing to report: ``AccountingNotConfigured`` says so, and callers
answer with what the controller still knows.
"""

import datetime
import re

from .runner import SlurmRefused
from .values import size_bytes, time_seconds

# sstat asks each job's node in turn: this many jobs per command keeps one call short.
SSTAT_BATCH = 100
_TRES = re.compile(r"([a-z/]+)=([^,]+)")
_CLOCK = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)$")


class AccountingNotConfigured(Exception):
    """The cluster keeps no accounting (no slurmdbd)."""


def duration(text):
    """Seconds (a float) of Slurm's ``[D-][HH:]MM:SS[.mmm]``; None when empty or unknown."""
    match = _CLOCK.match((text or "").strip())
    if not match:
        return None
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def memory(text):
    """Bytes of ``214252K``/``64G``/``1.5M`` as Slurm prints memory (``n``/``c`` suffixes of
    ReqMem, per node or per CPU, are dropped); None when empty."""
    text = (text or "").strip().rstrip("nc")
    if not text:
        return None
    try:
        return size_bytes(text)
    except ValueError:
        return None


def tres(text):
    """``{"cpu": "00:00:01", "mem": "214252K", ...}`` of a TRES string."""
    return dict(_TRES.findall(text or ""))


def _refused_as_unconfigured(answer):
    message = (answer.stderr or answer.stdout or "").lower()
    if "accounting storage is disabled" in message or "slurmdbd" in message and "not" in message:
        raise AccountingNotConfigured(message.strip()[:200])


class Accounting:
    def __init__(self, runner):
        self._runner = runner

    def step_usage(self, job_ids):
        """``{job id: {"cpu_seconds", "memory_bytes"}}`` of running jobs: their steps' CPU
        time so far and the memory in use now, summed over steps (sstat, in batches)."""
        usage = {}
        for start in range(0, len(job_ids), SSTAT_BATCH):
            batch = job_ids[start:start + SSTAT_BATCH]
            answer = self._runner.run("sstat", ["-a", "-n", "-P", "-j", ",".join(batch),
                                                "-o", "JobID,TRESUsageInTot"], check=False)
            if answer.returncode != 0 and not answer.stdout:
                _refused_as_unconfigured(answer)
            for line in answer.stdout.splitlines():
                step, _, used = line.partition("|")
                job_id = step.split(".", 1)[0]
                figures = tres(used)
                cpu = duration(figures.get("cpu"))
                if cpu is None:
                    continue
                entry = usage.setdefault(job_id, {"cpu_seconds": 0.0, "memory_bytes": 0})
                entry["cpu_seconds"] += cpu
                entry["memory_bytes"] += memory(figures.get("mem")) or 0
        return usage

    def job_record(self, job_id):
        """What accounting holds of one job: requested and used resources, or None when it
        does not know the job. Raises AccountingNotConfigured without slurmdbd."""
        fields = "JobID,State,ElapsedRaw,TotalCPU,ReqCPUS,AllocCPUS,ReqMem,Timelimit,MaxRSS,Start,End"
        answer = self._runner.run("sacct", ["-n", "-P", "-j", job_id, "-o", fields], check=False)
        if answer.returncode != 0:
            _refused_as_unconfigured(answer)
            raise SlurmRefused((answer.stderr or "sacct failed").strip()[:200])
        record = None
        peak = None
        for line in answer.stdout.splitlines():
            parts = line.split("|")
            if len(parts) < 11:
                continue
            step, state, elapsed, total_cpu, req_cpus, alloc_cpus, req_mem, limit, max_rss = parts[:9]
            rss = memory(max_rss)
            if rss is not None:
                peak = max(peak or 0, rss)
            if "." in step:
                continue
            limit_seconds = None
            if limit and limit not in ("UNLIMITED", "Partition_Limit"):
                try:
                    limit_seconds = time_seconds(limit)
                except ValueError:
                    limit_seconds = None
            record = {"state": state.split()[0] if state else None,
                      "elapsed_seconds": int(elapsed) if elapsed.isdigit() else None,
                      "cpu_seconds": duration(total_cpu), "cpus": _int(req_cpus),
                      "alloc_cpus": _int(alloc_cpus), "memory_bytes": memory(req_mem),
                      "time_seconds": limit_seconds}
        if record is not None:
            record["max_memory_bytes"] = peak
        return record

    def usage_by_partition(self, since, user=None):
        """``{partition: {"jobs", "cpu_seconds", "gpu_seconds"}}`` of the jobs (allocations,
        not steps) that ran since ``since`` (naive UTC), of ``user`` or everyone."""
        start = since.replace(tzinfo=datetime.timezone.utc).astimezone().strftime("%Y-%m-%dT%H:%M:%S")
        args = ["-n", "-P", "-X", "-S", start, "-E", "now", "-o", "JobID,Partition,CPUTimeRAW,ElapsedRaw,AllocTRES"]
        args += ["-u", user] if user else ["-a"]
        answer = self._runner.run("sacct", args, check=False)
        if answer.returncode != 0:
            _refused_as_unconfigured(answer)
            raise SlurmRefused((answer.stderr or "sacct failed").strip()[:200])
        partitions = {}
        for line in answer.stdout.splitlines():
            parts = line.split("|")
            if len(parts) < 5:
                continue
            _job, partition, cpu_time, elapsed, alloc = parts[:5]
            entry = partitions.setdefault(partition or "(none)", {"jobs": 0, "cpu_seconds": 0, "gpu_seconds": 0})
            entry["jobs"] += 1
            entry["cpu_seconds"] += _int(cpu_time) or 0
            gpus = _int(tres(alloc).get("gres/gpu")) or 0
            entry["gpu_seconds"] += gpus * (_int(elapsed) or 0)
        return partitions


def _int(text):
    text = (text or "").strip()
    return int(text) if text.isdigit() else None
