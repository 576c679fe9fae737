"""Slurm, as the portal uses it: commands run as the user (``runner``), their
outputs read (``parse``), shared cached state (``client``) and batch scripts
built from checked values (``script``). No HTTP here."""

from .client import Slurm
from .runner import SlurmAnswerLost, SlurmRefused, SlurmRunner, SlurmUnavailable

__all__ = ["Slurm", "SlurmRunner", "SlurmUnavailable", "SlurmAnswerLost", "SlurmRefused"]
