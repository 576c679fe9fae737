"""Slurm's pending reason codes, said as plain sentences for the dashboard.

``reason_text(reason, job)`` words the code squeue gives (``Dependency``,
``Resources``, ``Priority``, ``QOSMaxJobsPerUserLimit``, ...) with what the job
itself says: the jobs it waits for, its partition. Codes not listed fall back to
the families Slurm names them by (``AssocGrp*``, ``QOSMax*``...), then to the code.
"""

import re

from ..slurm import values

_DEPENDENCY_WORDS = {
    "afterok": "to finish successfully",
    "afternotok": "to fail",
    "afterany": "to end",
    "after": "to start",
    "aftercorr": "(the same task of it) to finish successfully",
}

REASONS = {
    "Resources": "waiting for free resources in partition {partition}",
    "Priority": "waiting for jobs with a higher priority in partition {partition} to start first",
    "BeginTime": "waiting for its start time",
    "JobHeldUser": "held by you: release it to let it start",
    "JobHeldAdmin": "held by an administrator",
    "PartitionDown": "partition {partition} is down",
    "PartitionInactive": "partition {partition} is not accepting jobs to run",
    "PartitionNodeLimit": "it asks for more nodes than partition {partition} allows",
    "PartitionTimeLimit": "its time limit is longer than partition {partition} allows",
    "PartitionConfig": "it asks for more than partition {partition} has",
    "ReqNodeNotAvail": "a node it needs is not available (down, drained or reserved)",
    "NodeDown": "a node it needs is down",
    "Reservation": "waiting for its reservation to start",
    "Licenses": "waiting for licenses to be free",
    "JobArrayTaskLimit": "the array's limit on tasks running at once (%) is reached",
    "DependencyNeverSatisfied": "it can never start: a job it depends on ended the wrong way",
    "InvalidAccount": "its account is not valid",
    "InvalidQOS": "its QOS is not valid",
    "QOSMaxJobsPerUserLimit": "your limit on running jobs (QOS) is reached",
    "QOSMaxSubmitJobPerUserLimit": "your limit on submitted jobs (QOS) is reached",
    "QOSMaxCpuPerUserLimit": "your limit on CPUs in use (QOS) is reached",
    "QOSMaxWallDurationPerJobLimit": "its time limit is longer than the QOS allows",
    "QOSJobLimit": "the QOS's limit on running jobs is reached",
    "QOSResourceLimit": "the QOS's limit on resources in use is reached",
    "AssocMaxJobsLimit": "your account's limit on running jobs is reached",
    "AssocGrpJobsLimit": "your account's limit on running jobs is reached",
    "AssocGrpCpuLimit": "your account's limit on CPUs in use is reached",
    "AssocGrpMemLimit": "your account's limit on memory in use is reached",
    "AssocGrpNodeLimit": "your account's limit on nodes in use is reached",
    "AssocGrpGRES": "your account's limit on GPUs or other devices in use is reached",
    "AssocGrpCPUMinutesLimit": "your account has used up its CPU time",
    "AssocGrpBillingMinutes": "your account has used up its allocation",
    "AssocMaxWallDurationPerJobLimit": "its time limit is longer than your account allows",
    "Cleaning": "it is being cleaned up before it can start again",
    "Prolog": "its node is running the prolog",
    "launch failed requeued held": "its start failed; it is held for an administrator to look at",
}

_FAMILIES = (
    (re.compile(r"^QOS.*PerUser"), "your limit in the QOS is reached"),
    (re.compile(r"^QOS"), "a limit of the QOS is reached"),
    (re.compile(r"^AssocGrp.*Minutes"), "your account has used up an allocation"),
    (re.compile(r"^Assoc"), "a limit of your account is reached"),
)


def dependency_text(dependency):
    """``waiting for job 123 to finish successfully``, from squeue's ``afterok:123(unfulfilled)``
    (or the submitted value); met terms are left out. None when nothing is waited for."""
    if not dependency:
        return None
    combine = " or " if "?" in dependency else " and "
    parts = []
    for term in re.split(r"[,?]", dependency):
        if "(" in term and not term.endswith("(unfulfilled)"):
            continue  # fulfilled or failed: not what the job waits for
        term = term.split("(", 1)[0]
        if term == "singleton":
            parts.append("for your other jobs of the same name to end")
            continue
        kind, _, ids = term.partition(":")
        words = _DEPENDENCY_WORDS.get(kind)
        if words is None or not ids:
            continue
        jobs = [i.split("+", 1)[0] for i in ids.split(":")]
        label = "job " + jobs[0] if len(jobs) == 1 else "jobs " + ", ".join(jobs)
        parts.append(f"for {label} {words}")
    return "waiting " + combine.join(parts) if parts else None


def reason_text(reason, job):
    """A plain sentence for Slurm's reason code ``reason`` of ``job`` (a dict with
    ``partition`` and ``dependency``), or None when there is no reason to give."""
    if not reason or reason == "None":
        return None
    if reason == "Dependency":
        return dependency_text(job.get("dependency")) or "waiting for the jobs it depends on"
    text = REASONS.get(reason)
    if text is None:
        text = next((words for pattern, words in _FAMILIES if pattern.match(reason)), None)
    if text is None:
        return f"Slurm says: {reason}"
    return text.format(partition=job.get("partition") or "(default)")


def dependency_edges(dependency):
    """``[(type, job id)]`` of the jobs ``dependency`` names (squeue's form or as submitted)."""
    if not dependency:
        return []
    plain = re.sub(r"\([a-z]*\)", "", dependency)
    try:
        terms, _combine = values.dependency_terms(plain)
    except ValueError:
        return []
    return [(kind, job.split("+", 1)[0]) for kind, job in terms if job is not None]


def insight_fields(row, live, state, reason):
    """The job answer's ``source``, ``dependency``, ``reasonText`` and array fields for the
    portal's ``row`` and squeue's ``live`` view of it (None once Slurm forgot the job)."""
    live = live or {}
    # squeue marks each term (unfulfilled) and drops the met ones: it says what is still awaited.
    waiting = live.get("dependency") or (None if live else row.dependency)
    fields = {"source": "portal", "dependency": row.dependency,
              "reasonText": reason_text(reason, {"partition": row.partition, "dependency": waiting})
              if state == "PENDING" else None,
              "arrayJobId": live.get("array_job_id"), "arrayTaskId": live.get("array_task_id")}
    if live.get("array_tasks"):
        fields["arrayTasks"] = live["array_tasks"]
    return fields
