"""The command backend: Slurm's commands, run by ``SlurmRunner``.

State queries (squeue, sinfo) run as the daemon (root on a head node, so
``PrivateData`` hides nothing) and are shared by every request through the
caches of ``backend.SlurmBackend``: many users refreshing their job lists cost
one squeue call every ``squeue_interval`` seconds, not one per request. Actions
(sbatch, scancel) run as the user.
"""

import logging
import re

from .backend import SlurmBackend
from .parse import parse_sacct_completion, parse_sinfo, parse_squeue_json
from .runner import SlurmRefused

log = logging.getLogger("hpcportal.slurm")

_JOB_ID = re.compile(r"^(\d+)(?:;\S+)?$")


class CommandBackend(SlurmBackend):
    name = "cli"

    def __init__(self, runner, **caches):
        super().__init__(**caches)
        self.runner = runner

    def _fetch_jobs(self):
        return parse_squeue_json(self.runner.run("squeue", ["--json", "--all", "-t", "all"]).stdout)

    def _fetch_partitions(self):
        return parse_sinfo(self.runner.run("sinfo", ["-h", "-a", "-o", "%P|%a|%D|%c|%m|%l|%G|%t"]).stdout)

    def submit(self, user, spec, script, meanwhile=None):
        """sbatch as ``user``, the batch script on its standard input: every option is in
        the script, and the script need not be on disk before sbatch reads it."""
        answer = self.runner.run("sbatch", ["--parsable"], user=user, cwd=spec.workdir, input=script,
                                 meanwhile=meanwhile)
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

