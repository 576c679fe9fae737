"""A ``JobSpec`` as slurmrestd's job description (REST API v0.0.38 field names).

slurmrestd never reads ``#SBATCH`` lines: everything sbatch would take from the
batch script comes from the model here, the resource fields and the user's own
allow-listed options alike. An option the API has no field for is refused with
a reason rather than left out, so a job never runs with less than was asked.
Newer API versions rename fields; their adapter translates this description.
"""

import math

from . import values
from .runner import SlurmRefused

# The user's #SBATCH option -> (REST field, how its checked text becomes the field's value).
_TEXT = str


def _minutes(text):
    seconds = values.time_seconds(text)
    return None if seconds is None else math.ceil(seconds / 60)


def _nodes(text):
    low, _, high = str(text).partition("-")
    return [int(low), int(high or low)]


_OPTIONS = {
    "job-name": ("name", _TEXT), "partition": ("partition", _TEXT), "account": ("account", _TEXT),
    "qos": ("qos", _TEXT), "reservation": ("reservation", _TEXT), "wckey": ("wckey", _TEXT),
    "nodes": ("nodes", _nodes), "ntasks": ("tasks", int), "ntasks-per-node": ("tasks_per_node", int),
    "ntasks-per-socket": ("tasks_per_socket", int), "ntasks-per-core": ("tasks_per_core", int),
    "cpus-per-task": ("cpus_per_task", int), "cpus-per-gpu": ("cpus_per_gpu", _TEXT),
    "mincpus": ("minimum_cpus_per_node", int), "sockets-per-node": ("sockets_per_node", int),
    "cores-per-socket": ("cores_per_socket", int), "threads-per-core": ("threads_per_core", int),
    "mem": ("memory_per_node", values.memory_megabytes), "mem-per-cpu": ("memory_per_cpu", values.memory_megabytes),
    "mem-per-gpu": ("memory_per_gpu", values.memory_megabytes), "time": ("time_limit", _minutes),
    "time-min": ("time_minimum", _minutes), "gres": ("gres", _TEXT), "gpus": ("gpus", _TEXT),
    "gpus-per-node": ("gpus_per_node", _TEXT), "gpus-per-task": ("gpus_per_task", _TEXT),
    "gpus-per-socket": ("gpus_per_socket", _TEXT), "constraint": ("constraints", _TEXT),
    "licenses": ("licenses", _TEXT), "array": ("array", _TEXT), "dependency": ("dependency", _TEXT),
    "begin": ("begin_time", _TEXT), "deadline": ("deadline", _TEXT), "mail-type": ("mail_type", _TEXT),
    "mail-user": ("mail_user", _TEXT), "signal": ("signal", _TEXT),
    # Flags and options whose value may be left out: sbatch's meaning of the bare option.
    "nice": ("nice", lambda text: 100 if text is None else int(text)),
    "exclusive": ("exclusive", lambda text: text or "exclusive"),
    "oversubscribe": ("oversubscribe", lambda text: True), "hold": ("hold", lambda text: True),
    "requeue": ("requeue", lambda text: True),
    # Not in the API document, but slurmrestd reads them as sbatch's options ("requeue": false is ignored).
    "no-requeue": ("no_requeue", lambda text: True), "nodelist": ("nodelist", _TEXT),
}
# Options slurmrestd v0.0.38 refuses ("Unknown key", "Operation not permitted"): ntasks-per-gpu,
# tmp, hint, exclude, overcommit, contiguous.


def job_description(spec, user):
    """The job description of ``spec`` (with the portal's options set: workdir, output,
    comment) for ``user`` (a ``User``). Raises SlurmRefused naming an option the API
    cannot take."""
    job = {}
    for option, value in spec.options:
        if option not in _OPTIONS:
            raise SlurmRefused(f"#SBATCH --{option} cannot be submitted through slurmrestd (REST API "
                               "v0.0.38 has no field for it); leave it out of the script.",
                               code="slurm_option_unsupported")
        name, convert = _OPTIONS[option]
        job[name] = convert(value)
    # The model's own fields speak over the script's options, as sbatch's command line would.
    fields = {"name": spec.name, "partition": spec.partition, "account": spec.account, "qos": spec.qos,
              "cpus_per_task": spec.cpus_per_task, "tasks_per_node": spec.tasks_per_node,
              "nodes": None if spec.nodes is None else _nodes(spec.nodes),
              "memory_per_node": None if spec.memory is None else values.memory_megabytes(spec.memory),
              "time_limit": None if spec.time is None else _minutes(spec.time),
              "gres": f"gpu:{spec.gpus}" if spec.gpus else spec.gres,
              "dependency": spec.dependency, "array": spec.array,
              "current_working_directory": spec.workdir, "standard_output": spec.output,
              "standard_error": spec.error, "comment": spec.comment}
    job.update({name: value for name, value in fields.items() if value is not None})
    if spec.memory is not None:
        for covered in ("memory_per_cpu", "memory_per_gpu"):
            job.pop(covered, None)
    if "tasks_per_node" in job and "tasks" not in job:
        # sbatch computes the task count from the nodes; slurmrestd leaves it at one.
        job["tasks"] = job.get("nodes", [1])[0] * job["tasks_per_node"]
    job["environment"] = _environment(user)
    return job


def _environment(user):
    """What a login gives before the profile runs: the batch script's ``bash -l`` reads the
    profile and exports the job's own variables (as ``sbatch --export=NONE`` leaves it)."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": user.home or "/", "USER": user.name,
            "LOGNAME": user.name, "SHELL": "/bin/bash", "LANG": "C.UTF-8"}
