"""Running Slurm's commands: as the user, in a clean environment, with a timeout.

Every call goes through ``SlurmRunner.run``. A call on behalf of a user runs
with that user's uid, gid and supplementary groups (never as root), so Slurm
itself checks what the user may do. The environment is rebuilt from scratch: the
daemon's own variables never reach Slurm or a job. Failures become the daemon's
exceptions: an unreachable controller is a ``SlurmUnavailable`` (503), a
refusal by Slurm a ``SlurmRefused`` (422) carrying Slurm's own message.
"""

import logging
import os
import re
import subprocess
import time

from ..errors import ServiceUnavailable, Unprocessable

log = logging.getLogger("hpcportal.slurm")

UNREACHABLE_PREFIX = "Slurm controller is not reachable"

# What Slurm's clients print when they cannot talk to slurmctld (or munge).
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused|connect failure|"
    r"Zero Bytes were transmitted|Communication connection failure|Unable to establish controller|"
    r"failed to fetch config|Munge encode failed|Unable to (?:create|open) .*munge|"
    r"Slurm backup controller in standby mode|Transport endpoint|"
    r"Protocol authentication error|Failed while looking for jobs|Failed to load partitions",
    re.IGNORECASE)
_PREFIX = re.compile(r"^(?:sbatch|squeue|scancel|sinfo|sacct|scontrol|sacctmgr):\s*(?:error:\s*)?",
                     re.IGNORECASE)


class SlurmUnavailable(ServiceUnavailable):
    """slurmctld (or munge) cannot be reached; retrying later may work."""

    code = "slurm_unavailable"

    def __init__(self, message, **kwargs):
        kwargs.setdefault("headers", {"Retry-After": "10"})
        super().__init__(message, **kwargs)


class SlurmAnswerLost(SlurmUnavailable):
    """The command was started but its answer never came (timeout, killed).

    For sbatch the job may or may not exist: the caller must look for it."""

    code = "slurm_answer_lost"


class SlurmRefused(Unprocessable):
    """Slurm answered and said no; ``message`` is Slurm's own reason."""

    code = "slurm_refused"


def slurm_message(stderr):
    """Slurm's reason without the command's prefix, on one line."""
    lines = [_PREFIX.sub("", line).strip() for line in (stderr or "").splitlines() if line.strip()]
    text = "; ".join(line for line in lines if line)
    text = re.sub(r"^Batch job submission failed:\s*", "", text)
    return text[:1000] or "Slurm gave no reason."


def clean_environment(user=None, slurm_conf=None):
    """A minimal environment, like a fresh login would have, plus SLURM_CONF."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if user is not None:
        env.update({"USER": user.name, "LOGNAME": user.name, "HOME": user.home or "/"})
    if slurm_conf:
        env["SLURM_CONF"] = slurm_conf
    return env


SETPRIV = "/usr/bin/setpriv"


def as_user(user, argv, setpriv=SETPRIV):
    """``(argv, subprocess kwargs)`` that run ``argv`` with the user's uid, gid and groups.

    As root, util-linux's setpriv drops to the user (real, effective and saved
    ids; capabilities cleared) right before exec. Python's own ``user=``/``group=``
    does the same but forces a full fork() of the daemon, which costs tens of
    milliseconds once the daemon's heap has grown; without them subprocess can
    use vfork(). Without setpriv, or not as root, subprocess's arguments are used.
    """
    if user.uid == 0:
        # The user directory refuses root already; this is the last line.
        raise PermissionError("commands are never run as root on a user's behalf")
    groups = sorted({*user.groups, user.gid})
    if os.geteuid() == 0 and setpriv and os.access(setpriv, os.X_OK):
        return [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}",
                "--groups=" + ",".join(str(g) for g in groups), "--", *argv], {}
    return argv, {"user": user.uid, "group": user.gid,
                  "extra_groups": [g for g in groups if g != user.gid]}


class SlurmRunner:
    """Runs one Slurm command line and maps its failure to our exceptions.

    ``observe(command, seconds, outcome)`` is called after every call (metrics).
    """

    def __init__(self, bin_dir="/usr/bin", conf=None, timeout=60.0, observe=None, setpriv=SETPRIV):
        self._bin_dir = bin_dir
        self._setpriv = setpriv
        self.conf = conf
        self.timeout = timeout
        self._observe = observe or (lambda command, seconds, outcome: None)

    def path_of(self, command):
        return os.path.join(self._bin_dir, command)

    def run(self, command, args, *, user=None, timeout=None, cwd=None, check=True, input=None, meanwhile=None):
        """``command args...`` (as ``user`` when given); the CompletedProcess. ``input``
        is its standard input; ``meanwhile()`` runs while the command does.

        Raises SlurmUnavailable, SlurmAnswerLost (timeout or killed) or, when
        ``check``, SlurmRefused for any other non-zero exit.
        """
        argv = [self.path_of(command), *args]
        kwargs = {}
        if user is not None:
            argv, kwargs = as_user(user, argv, self._setpriv)
        timeout = timeout or self.timeout
        started = time.monotonic()
        outcome = "ok"
        try:
            proc = self._communicate(argv, kwargs, user, cwd, timeout, input, meanwhile)
        except subprocess.TimeoutExpired:
            outcome = "timeout"
            raise SlurmAnswerLost(
                f"{UNREACHABLE_PREFIX}: {command} did not answer within {timeout:.0f} s.",
                code="slurm_timeout") from None
        except (FileNotFoundError, PermissionError):
            outcome = "missing"
            raise self._missing(command, argv[0]) from None
        finally:
            self._observe(command, time.monotonic() - started, outcome)
        if (proc.returncode in (126, 127) and argv[0] == self._setpriv
                and (proc.stderr or "").startswith("setpriv:")):
            # setpriv itself could not start the command; its message names our paths.
            raise self._missing(command, (proc.stderr or "").strip()[:300])
        if proc.returncode < 0:
            raise SlurmAnswerLost(f"{UNREACHABLE_PREFIX}: {command} was killed by signal {-proc.returncode}.")
        if proc.returncode != 0:
            message = slurm_message(proc.stderr or proc.stdout)
            if _UNREACHABLE.search(proc.stderr or "") or _UNREACHABLE.search(proc.stdout or ""):
                log.warning("%s: controller unreachable: %s", command, message)
                raise SlurmUnavailable(f"{UNREACHABLE_PREFIX}: {message}")
            if check:
                raise SlurmRefused(message)
        return proc

    def _communicate(self, argv, kwargs, user, cwd, timeout, input, meanwhile):
        """``subprocess.run``, with ``meanwhile()`` between starting the command and waiting for it."""
        with subprocess.Popen(argv, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                              env=clean_environment(user, self.conf), cwd=cwd or "/", **kwargs) as process:
            try:
                if meanwhile is not None:
                    meanwhile()
                stdout, stderr = process.communicate(input, timeout=timeout)
            except BaseException:
                process.kill()
                process.wait()
                raise
        return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)

    def _missing(self, command, detail):
        # The answer names the command only: where this head keeps its binaries is not the caller's business.
        log.error("%s cannot be run: %s", command, detail)
        return SlurmUnavailable(f"{UNREACHABLE_PREFIX}: the Slurm command {command} cannot be run on this "
                                "head node.", code="slurm_missing")
