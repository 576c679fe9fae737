"""Slurm, as the portal uses it: what is asked of it (``backend.SlurmBackend``,
its shared caches), through the commands run as the user (``client``, ``runner``,
their outputs read by ``parse``) or through slurmrestd (``restbackend``, over the
HTTP client ``rest``, a job described by ``restjob``), one of them chosen by
``choice``; the one parser of each Slurm value (``values``), a user's ``#SBATCH``
lines read (``directives``), one job described (``job.JobSpec``) and written as a
batch script (``script``). No falcon here."""

from .runner import SlurmAnswerLost, SlurmRefused, SlurmRunner, SlurmUnavailable

__all__ = ["SlurmRunner", "SlurmUnavailable", "SlurmAnswerLost", "SlurmRefused"]
