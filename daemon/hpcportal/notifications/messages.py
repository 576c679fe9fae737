"""What happened to a job, in plain words: the title and message of its events."""

import signal

from ..slurm.values import size_bytes, time_seconds

FINISHED = ("COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "CANCELLED", "NODE_FAIL")

# Slurm's pending reasons that mean "resources short" or "a limit", in words.
# Others (a dependency, a begin time, a hold) are the user's own choice: no warning.
_WAITING_REASONS = {
    "Resources": "the nodes it needs are busy",
    "Priority": "jobs with a higher priority are waiting for the same nodes",
    "ReqNodeNotAvail": "the nodes it asked for are not available (down, drained or reserved)",
    "PartitionNodeLimit": "it asks for more nodes than its partition allows",
    "PartitionTimeLimit": "its time limit is longer than its partition allows",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "Reservation": "it waits for its reservation to start",
    "AssocGrpCpuLimit": "your account's CPU limit is reached",
    "AssocGrpJobsLimit": "your account's limit of running jobs is reached",
    "AssocGrpMemLimit": "your account's memory limit is reached",
    "AssocGrpGRES": "your account's GPU limit is reached",
    "AssocMaxJobsLimit": "your limit of running jobs is reached",
    "QOSMaxCpuPerUserLimit": "your QOS's CPU limit per user is reached",
    "QOSMaxJobsPerUserLimit": "your QOS's limit of running jobs per user is reached",
    "QOSMaxMemoryPerUser": "your QOS's memory limit per user is reached",
    "QOSGrpCpuLimit": "your QOS's CPU limit is reached",
    "QOSGrpGRES": "your QOS's GPU limit is reached",
    "QOSMaxWallDurationPerJobLimit": "its time limit is longer than your QOS allows",
}


def waiting_reason(reason):
    """The reason in words when a pending job waits for resources or a limit, else None."""
    reason = (reason or "").strip()
    if reason in _WAITING_REASONS:
        return _WAITING_REASONS[reason]
    if reason.endswith("Limit") or "Limit" in reason:
        return f"a limit is reached ({reason})"
    return None


def duration(seconds):
    """``2 h 10 min``, ``45 s``, ``3 d 4 h``: rounded to the two largest units."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min" + (f" {secs} s" if secs and minutes < 10 else "")
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(hours, 24)
    return f"{days} d" + (f" {hours} h" if hours else "")


def memory(text):
    """``16G`` -> ``16 GB``; None when the job asked for no amount."""
    if not text:
        return None
    try:
        amount = size_bytes(text, "M")
    except ValueError:
        return text
    for unit, power in (("TB", 4), ("GB", 3), ("MB", 2)):
        if amount >= 1024 ** power:
            value = amount / 1024 ** power
            return f"{value:.0f} {unit}" if value == int(value) or value >= 10 else f"{value:.1f} {unit}"
    return f"{amount} bytes"


def time_limit(text):
    """A job's time limit (as stored: ``01:00:00``, ``1``, ``UNLIMITED``) in words, or None."""
    if not text:
        return None
    try:
        seconds = time_seconds(str(text))
    except ValueError:
        return None
    return None if seconds is None else duration(seconds)


def exit_status(exit_code):
    """(code, signal) from Slurm's ``code:signal`` or a plain number; (None, None) if unknown."""
    if exit_code is None or exit_code == "":
        return None, None
    text = str(exit_code)
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def job_finished(state, *, exit_code=None, elapsed=None, memory_asked=None, time_asked=None):
    """Why the job ended, in words: the message of ``job.finished``."""
    after = f" after {duration(elapsed)}" if elapsed is not None else ""
    code, sig = exit_status(exit_code)
    if state == "COMPLETED":
        return f"finished successfully{after}"
    if state == "OUT_OF_MEMORY":
        amount = memory(memory_asked)
        what = f"its {amount} of memory" if amount else "its memory"
        return f"ran out of {what}{after}; ask for more memory"
    if state == "TIMEOUT":
        limit = time_limit(time_asked)
        what = f"its {limit} time limit" if limit else "its time limit"
        return f"hit {what} and was stopped; ask for more time or save progress more often"
    if state == "CANCELLED":
        return f"was cancelled{after}"
    if state == "NODE_FAIL":
        return f"stopped{after} because a node it ran on failed; submit it again"
    if state == "FAILED":
        if sig:
            return f"was killed by {_signal_name(sig)}{after}"
        if code is not None:
            return f"failed with exit code {code}{after}; see its error output"
        return f"failed{after}; see its error output"
    return f"ended in state {state}{after}"


def job_title(job_id, name, state):
    words = {"COMPLETED": "completed", "FAILED": "failed", "TIMEOUT": "hit its time limit",
             "OUT_OF_MEMORY": "ran out of memory", "CANCELLED": "was cancelled",
             "NODE_FAIL": "lost its node", "RUNNING": "is running", "PENDING": "is pending"}
    return f"Job {job_id} ({name}) {words.get(state, state.lower())}"


def job_state(state, previous):
    """The message of ``job.state``."""
    if previous:
        return f"changed from {previous} to {state}"
    return f"is {state}"


def job_waiting(waited, reason):
    return f"has been waiting for {duration(waited)}: resources short ({waiting_reason(reason)})"
