"""Every job of a user: the portal's rows and what the shared squeue snapshot shows.

A job submitted through the portal has a row (``source: portal``); each task of
its array is listed on its own, answered from the row and the task's squeue
entry. Jobs Slurm knows that the portal did not submit (``sbatch`` on a login
node) are listed from the snapshot alone (``source: cluster``): what Slurm says
of them, and their output files, read only when the user may read them, under
the same no-symlink, no-FIFO rules as the portal's own files.
"""

import os
import posixpath
import re

from ..errors import NotFound, UnsafePath
from ..models.base import isoformat, utcnow
from ..models.jobs import Job
from ..safefiles import open_regular
from ..slurm.parse import FINAL_STATES
from ..slurm.values import format_time
from .inputs import readable_by
from .reasons import reason_text

_TRES_MEMORY = re.compile(r"(?:^|,)mem=([0-9.]+[KMGTP]?)")
_TRES_GPUS = re.compile(r"(?:^|,)gres/gpu=([0-9]+)")


def parent_id(job):
    """The id under which the portal knows ``job``: its array's, for a task."""
    return job.get("array_job_id") or job["job_id"]


def output_path(job, stream):
    """The file Slurm writes ``stream`` of ``job`` (squeue's entry) to, its patterns filled in;
    sbatch's default ``slurm-%j.out`` (``slurm-%A_%a.out`` for arrays) in the job's folder."""
    path = job.get("stdout" if stream == "stdout" else "stderr")
    if not path and stream == "stderr":
        path = job.get("stdout")  # without --error, stderr goes with stdout
    if not path:
        path = "slurm-%A_%a.out" if job.get("array_job_id") else "slurm-%j.out"
    if not path.startswith("/"):
        path = posixpath.join(job.get("work_dir") or "/", path)
    fields = {"j": job["job_id"], "A": job.get("array_job_id") or job["job_id"],
              "a": str(job.get("array_task_id") if job.get("array_task_id") is not None else 4294967294),
              "u": job.get("user") or "", "x": job.get("name") or "", "%": "%",
              "N": (job.get("nodes") or "").split(",")[0]}
    return re.sub(r"%(\d*)([jAauxN%])", lambda m: fields[m.group(2)].zfill(int(m.group(1) or 0)), path)


def cluster_row(job):
    """An unsaved job row standing for a job the portal did not submit."""
    return Job(submission_id=None, slurm_job_id=job["job_id"], user=job.get("user") or "",
               uid=job.get("uid") or 0, name=job.get("name") or "", partition=job.get("partition"),
               job_dir=job.get("work_dir") or "", script_path="", state=job.get("state") or "UNKNOWN",
               stdout_path=output_path(job, "stdout"), stderr_path=output_path(job, "stderr"),
               submitted_at=job.get("submitted_at"))


def task_row(row, task):
    """The portal's ``row`` as it stands for one task of its array (its own id and output files)."""
    values = dict(row.__data__)
    values.pop("id", None)
    values["slurm_job_id"] = task["job_id"]
    for key, stream in (("stdout_path", "stdout"), ("stderr_path", "stderr")):
        values[key] = posixpath.join(row.job_dir, posixpath.basename(output_path(task, stream)))
    copy = Job(**values)
    copy.array_parent = row
    return copy


def serialize_cluster(job):
    """The job object of the API for a job Slurm knows and the portal did not submit."""
    state = job.get("state") or "UNKNOWN"
    started = None if state == "PENDING" else job.get("started_at")
    ended = job.get("ended_at") if state in FINAL_STATES else None
    tres = job.get("tres") or ""
    memory = _TRES_MEMORY.search(tres)
    gpus = _TRES_GPUS.search(tres)
    limit = job.get("time_limit")
    return {
        "jobId": job["job_id"], "submissionId": None, "name": job.get("name"), "user": job.get("user"),
        "partition": job.get("partition"), "state": state, "reason": job.get("reason"),
        "exit_code": job.get("exit_code"), "submitted_at": isoformat(job.get("submitted_at")),
        "started_at": isoformat(started), "ended_at": isoformat(ended),
        "elapsed": int(((ended or utcnow()) - started).total_seconds()) if started else None,
        "nodes": job.get("nodes"),
        "resources": {"nodes": job.get("node_count"), "cpus": job.get("cpus"),
                      "memory": memory.group(1) if memory else None,
                      "time": format_time(limit * 60) if isinstance(limit, int) else None,
                      "account": job.get("account"), "qos": job.get("qos"),
                      "gpus": int(gpus.group(1)) if gpus else None},
        "image": None, "template": None, "source": "cluster", "dependency": _plain(job.get("dependency")),
        "reasonText": reason_text(job.get("reason"), job) if state == "PENDING" else None,
        "arrayJobId": job.get("array_job_id"), "arrayTaskId": job.get("array_task_id"),
        **({"arrayTasks": job["array_tasks"]} if job.get("array_tasks") else {}),
    }


def _plain(dependency):
    """squeue's dependency without its ``(unfulfilled)`` marks."""
    return re.sub(r"\([a-z]*\)", "", dependency) if dependency else None


def sort_key(job):
    return (job["submitted_at"] or "", int(job["jobId"]) if job["jobId"].isdigit() else 0)


def merge(rows, live, serialize, *, user=None, cluster=True):
    """Job answers of ``rows`` (portal rows, each array task on its own) and of the jobs of
    ``user`` (None: everyone's) that only the snapshot ``live`` shows, newest first."""
    tasks = {}
    for job in (live or {}).values():
        if user is None or job.get("user") == user:
            tasks.setdefault(parent_id(job), []).append(job)
    answers = []
    for row in rows:
        seen = tasks.pop(row.slurm_job_id, None)
        if not seen:
            answers.append(serialize(row, None))
            continue
        for task in seen:
            answer = serialize(row, task)
            answer["jobId"] = task["job_id"]
            answers.append(answer)
    for seen in tasks.values() if cluster else ():
        answers.extend(serialize_cluster(job) for job in seen)
    answers.sort(key=sort_key, reverse=True)
    return answers


def find(job_id, live, row_of, cluster=True):
    """The row standing for ``job_id``: the portal's, one task of a portal array, or a
    cluster job's; None when neither the database nor the snapshot knows it."""
    row = row_of(job_id)
    if row is not None:
        return row
    job = (live or {}).get(job_id)
    if job is None:
        return None
    if job.get("array_job_id"):
        parent = row_of(job["array_job_id"])
        if parent is not None:
            return task_row(parent, job)
    return cluster_row(job) if cluster else None


def open_output(owner, path):
    """A read descriptor of a cluster job's output file ``path``: only a plain file the
    job's user owns and may read (asked as that user), never through a symbolic link."""
    refusal = f"{path} is not a plain file of the job's user; refusing to read it."
    if not path.startswith("/") or "\x00" in path:
        raise NotFound(f"The job's output file {path!r} is not a path the portal reads.", code="file_not_found")
    if not readable_by(owner, path):
        raise NotFound(f"The job's output file {path} does not exist or you may not read it.",
                       code="file_not_found")
    try:
        folder = os.open(posixpath.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise NotFound(f"The job's output file {path} does not exist.", code="file_not_found") from None
    try:
        fd, info = open_regular(posixpath.basename(path), os.O_RDONLY, folder, refusal)
    except FileNotFoundError:
        raise NotFound(f"The job's output file {path} does not exist.", code="file_not_found") from None
    finally:
        os.close(folder)
    if info.st_uid != owner.uid:
        os.close(fd)
        raise UnsafePath(refusal)
    return fd
