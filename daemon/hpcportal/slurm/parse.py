"""Reading what Slurm's commands print (Slurm 22.05 and later)."""

import datetime
import json
import re

from .runner import UNREACHABLE_PREFIX, SlurmUnavailable

# States after which a job never changes again.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


def utc_from_epoch(value):
    if not value:
        return None
    return datetime.datetime.fromtimestamp(int(value), datetime.timezone.utc).replace(tzinfo=None)


def utc_from_slurm(text):
    """``2026-11-28T09:42:13`` (the daemon's local time, as Slurm prints it) -> naive UTC."""
    if not text or text in ("Unknown", "None", "N/A", "(null)"):
        return None
    try:
        local = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return local.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def exit_code_from_status(status):
    """squeue --json gives the raw wait status; Slurm writes ``code:signal``."""
    if status is None:
        return None
    status = int(status)
    return f"{(status >> 8) & 0xFF}:{status & 0x7F}"


def _state(value):
    if isinstance(value, list):  # newer Slurm: a list of flags
        value = value[0] if value else ""
    return str(value or "").split()[0] if value else ""


def parse_squeue_json(text):
    """The jobs of ``squeue --json``: dicts with our field names."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        raise SlurmUnavailable(f"{UNREACHABLE_PREFIX}: squeue printed no JSON.") from None
    if document.get("errors"):
        first = document["errors"][0]
        raise SlurmUnavailable(
            f"{UNREACHABLE_PREFIX}: {first.get('description') or first.get('error') or 'squeue failed'}.")
    return [job_fields(job) for job in document.get("jobs") or []]


def job_fields(job):
    """One job of the v0.0.38 job schema (``squeue --json`` and slurmrestd's jobs share it)
    with our field names."""
    exit_code = job.get("exit_code")
    if isinstance(exit_code, dict):  # newer Slurm: {"status": ..., "return_code": ...}
        code = exit_code.get("return_code")
        exit_code = f"{code.get('number', 0) if isinstance(code, dict) else (code or 0)}:0"
    else:
        exit_code = exit_code_from_status(exit_code)
    return {
        "job_id": str(job.get("job_id")),
        "name": job.get("name"),
        "user": job.get("user_name"),
        "uid": job.get("user_id"),
        "partition": job.get("partition"),
        "state": _state(job.get("job_state")),
        "reason": job.get("state_reason") if job.get("state_reason") not in (None, "None") else None,
        "exit_code": exit_code,
        "submitted_at": utc_from_epoch(_number(job.get("submit_time"))),
        "started_at": utc_from_epoch(_number(job.get("start_time"))),
        "ended_at": utc_from_epoch(_number(job.get("end_time"))),
        "nodes": job.get("nodes") or None,
        "comment": job.get("comment") or "",
        "time_limit": _number(job.get("time_limit")),
        "cpus": _number(job.get("cpus")),
        "node_count": _number(job.get("node_count")),
        "work_dir": job.get("current_working_directory"),
        # 0 and "" when the job is no array; the pending rest of an array is one entry
        # with no task id and its tasks in array_task_string.
        "array_job_id": str(job["array_job_id"]) if _number(job.get("array_job_id")) else None,
        "array_task_id": _number(job.get("array_task_id")),
        "array_tasks": job.get("array_task_string") or None,
        "dependency": job.get("dependency") or None,
        "stdout": job.get("standard_output") or None,
        "stderr": job.get("standard_error") or None,
        "account": job.get("account") or None,
        "qos": job.get("qos") or None,
        "tres": job.get("tres_req_str") or None,
    }


def _number(value):
    if isinstance(value, dict):  # newer Slurm: {"set": true, "infinite": false, "number": N}
        return value.get("number") if value.get("set") else None
    return value


def parse_sinfo(text):
    """``sinfo -h -a -o '%P|%a|%D|%c|%m|%l|%G|%t'``, one line per node group -> partitions."""
    partitions = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 8:
            continue
        name, avail, nodes, cpus, memory, limit, gres, node_state = parts[:8]
        default = name.endswith("*")
        name = name.rstrip("*")
        entry = partitions.setdefault(name, {
            "name": name, "state": avail.upper(), "default": default, "nodes": 0, "cpus": 0,
            "memory_mb": 0, "gpus": 0, "time_limit": limit, "node_states": []})
        count = _int(nodes)
        entry["nodes"] += count
        entry["cpus"] += _int(cpus.rstrip("+")) * count
        entry["memory_mb"] = max(entry["memory_mb"], _int(memory.rstrip("+")))
        entry["gpus"] += sum(_gpu_count(g) for g in gres.split(",")) * count
        if node_state not in entry["node_states"]:
            entry["node_states"].append(node_state)
    return list(partitions.values())


def _int(text):
    try:
        return int(text)
    except ValueError:
        return 0


def _gpu_count(gres):
    match = re.match(r"gpu(?::[^:(]+)?:(\d+)", gres.strip())
    return int(match.group(1)) if match else 0


def parse_sacct_completion(text):
    """``sacct -c -n -P -o JobID,State,ExitCode,Start,End,NodeList`` -> {job id: fields}."""
    out = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 6 or not parts[0].strip().isdigit():
            continue
        job_id, state, exit_code, start, end, nodes = parts[:6]
        out[job_id.strip()] = {"state": _state(state), "exit_code": exit_code or None,
                               "started_at": utc_from_slurm(start), "ended_at": utc_from_slurm(end),
                               "nodes": None if nodes in ("", "(null)", "None assigned") else nodes}
    return out
