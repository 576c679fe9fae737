"""The slurmrestd backend: the portal's Slurm calls over one pooled HTTP client.

Submit and cancel carry the user's own token; the shared snapshot, partitions and
nodes are read with a root token, once per cache interval for every request.
Accounting (final states of jobs Slurm has forgotten, a user's associations)
comes from slurmrestd's ``/slurmdb/`` API when it has one (slurmdbd and the
``openapi/dbv*`` plugin); without it, from ``sacct``/``sacctmgr`` when this head
has them, and is otherwise simply not known (a job keeps the last state it was
seen in).
"""

import logging
import os

from . import values
from .backend import SlurmBackend
from .parse import job_fields
from .rest import SlurmdbMissing
from .restjob import job_description
from .runner import SlurmUnavailable

log = logging.getLogger("hpcportal.slurm")

# slurmrestd's node states as sinfo's %t prints them.
_NODE_STATES = {"idle": "idle", "mixed": "mix", "allocated": "alloc", "down": "down", "drained": "drain",
                "draining": "drng", "completing": "comp", "error": "err", "future": "futr", "unknown": "unk"}


class RestBackend(SlurmBackend):
    name = "rest"

    def __init__(self, rest, *, accounting=None, **caches):
        """``rest``: a ``rest.SlurmRest``; ``accounting``: a command backend asked for
        ``finished`` and ``associations`` when its commands exist on this head."""
        super().__init__(**caches)
        self.rest = rest
        self._accounting = accounting

    @property
    def version(self):
        return self.rest.version

    def ping(self):
        return self.rest.ping()

    def _fetch_jobs(self):
        return [job_fields(job) for job in self.rest.jobs()]

    def _fetch_partitions(self):
        nodes = {node.get("name"): node for node in self.rest.nodes()}
        out = []
        for partition in self.rest.partitions():
            members = [n for n in nodes.values() if partition.get("name") in (n.get("partitions") or [])]
            states = []
            for node in members:
                state = _NODE_STATES.get(str(node.get("state") or "").lower(), str(node.get("state") or "").lower())
                if state not in states:
                    states.append(state)
            limit = partition.get("max_time_limit")
            out.append({
                "name": partition.get("name"), "state": str(partition.get("state") or "").upper(),
                "default": "default" in (partition.get("flags") or []),
                "nodes": partition.get("total_nodes") or 0, "cpus": partition.get("total_cpus") or 0,
                "memory_mb": max((n.get("real_memory") or 0 for n in members), default=0),
                "gpus": sum(_gpus(n.get("gres") or "") for n in members),
                "time_limit": "infinite" if limit in (None, -1) or limit < 0 else _sinfo_time(limit * 60),
                "node_states": states})
        return out

    def submit(self, user, spec, script, meanwhile=None):
        return str(self.rest.submit(user.name, job_description(spec, user), script, meanwhile=meanwhile))

    def cancel(self, user, job_id):
        self.rest.cancel(user.name, job_id)
        self.invalidate()

    def finished(self, job_ids):
        if not job_ids:
            return {}
        try:
            return self.rest.finished(job_ids)
        except SlurmdbMissing:
            pass
        except SlurmUnavailable as exc:
            # As with a failing sacct: the jobs keep their last state until the next pass asks again.
            log.info("slurmdbd could not tell finished jobs: %s", exc.message)
            return {}
        if self._has("sacct"):
            return self._accounting.finished(job_ids)
        return {}

    def associations(self, user):
        try:
            items = self.rest.associations(user.name)
        except SlurmdbMissing:
            pass
        else:
            return items, None if items else "You have no Slurm associations; jobs run without an account."
        if self._has("sacctmgr"):
            return self._accounting.associations(user)
        return [], "Slurm accounting cannot be read on this head: there are no accounts or QOS to choose."

    def _has(self, command):
        return self._accounting is not None and os.access(self._accounting.runner.path_of(command), os.X_OK)


def _gpus(gres):
    return sum(int(part.split("(")[0].rsplit(":", 1)[-1]) for part in gres.split(",")
               if part.startswith("gpu") and part.split("(")[0].rsplit(":", 1)[-1].isdigit())


def _sinfo_time(seconds):
    """sinfo's ``%l``: ``D-HH:MM:SS``, ``H:MM:SS`` under a day."""
    text = values.format_time(seconds)
    return text[1:] if text.startswith("0") and "-" not in text else text
