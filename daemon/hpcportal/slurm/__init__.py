"""Slurm, as the portal uses it: commands run as the user (``runner``), their
outputs read (``parse``), shared cached state (``client``), the one parser of
each Slurm value (``values``), a user's ``#SBATCH`` lines read (``directives``),
one job described (``job.JobSpec``) and written as a batch script (``script``),
and the same calls through slurmrestd (``rest``, an HTTP client; not used by the
daemon yet). No falcon here."""

from .client import Slurm
from .runner import SlurmAnswerLost, SlurmRefused, SlurmRunner, SlurmUnavailable

__all__ = ["Slurm", "SlurmRunner", "SlurmUnavailable", "SlurmAnswerLost", "SlurmRefused"]
