"""Slurm through slurmrestd: short-lived JWTs signed here, one pooled keep-alive
HTTP client, and the REST API's version kept in one small adapter class.

A call on a user's behalf carries that user's token, so slurmctld checks what the
user may do exactly as it does for their own sbatch. The key can sign a token for
any user (root included): it is read once and never logged, nor are the tokens.

Failures use the same exceptions as the commands (``runner``): an unreachable or
broken slurmrestd is ``SlurmUnavailable``, Slurm's own "no" is ``SlurmRefused``
with Slurm's reason."""

import json
import logging
import urllib.parse
import threading
import time

import jwt

from .http import ConnectionPool, NoAnswer, Unreachable
from .parse import utc_from_epoch
from .runner import SlurmAnswerLost, SlurmRefused, SlurmUnavailable

log = logging.getLogger("hpcportal.slurm")

# Slurm's "Invalid job id specified": a job it does not know (any more).
_UNKNOWN_JOB = 2017
# slurmdbd's "Nothing found with query": an empty answer, not an error.
_NOTHING_FOUND = 9003


class SlurmdbMissing(SlurmUnavailable):
    """slurmrestd has no ``/slurmdb/`` part (started without the ``openapi/dbv*`` plugin,
    as it must be on a cluster without slurmdbd): accounting is read some other way."""


def _is_outage(number):
    """Slurm error numbers that say "not now" rather than "no". slurmrestd reports
    both an unreachable slurmctld and a token slurmctld rejects (a key that is not
    slurmctld's) as -1 "Unspecified error"; 1000-1099 are the protocol and
    communication errors, 1800-1899 slurmctld's; 7000 and 7008 a lost or invalid connection to slurmdbd."""
    return number == -1 or (isinstance(number, int) and (1000 <= number < 1100 or 1800 <= number < 1900
                                                          or number in (7000, 7008)))


class TokenSigner:
    """Signs HS256 Slurm tokens (claims ``sun``, ``iat``, ``exp``) and reuses each
    user's token until it is close to expiring: signing is cheap, but one token per
    user keeps the tokens in flight few."""

    def __init__(self, key, lifetime=300, renew_before=60, clock=time.time):
        if renew_before >= lifetime:
            raise ValueError("renew_before must be shorter than the token lifetime")
        self._key = key
        self._lifetime = int(lifetime)
        self._renew_before = renew_before
        self._clock = clock
        self._tokens = {}  # user name -> (token, expiry)
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path, **kwargs):
        with open(path, "rb") as f:
            key = f.read()
        if not key:
            raise ValueError(f"the JWT key file {path} is empty")
        return cls(key, **kwargs)

    def token(self, user):
        now = self._clock()
        with self._lock:
            cached = self._tokens.get(user)
            if cached and cached[1] - now > self._renew_before:
                return cached[0]
            issued = int(now)
            expiry = issued + self._lifetime
            token = jwt.encode({"sun": user, "iat": issued, "exp": expiry}, self._key, algorithm="HS256")
            self._tokens[user] = (token, expiry)
            return token

    def __repr__(self):
        return f"TokenSigner(lifetime={self._lifetime}, users={len(self._tokens)})"


class ApiV0038:
    """Paths and answers of the REST API v0.0.38 (Slurm 22.05). A newer version is
    a sibling class with the same methods, added to ``API_VERSIONS``."""

    version = "v0.0.38"

    def path(self, what):
        return f"/slurm/{self.version}/{what}"

    def submit_body(self, job, script):
        return {"job": job, "script": script}

    def job_id(self, answer):
        return int(answer["job_id"])

    def submitted(self, answer):
        """Whether a submit's answer names a job: Slurm adds notes such as "Job is in held
        state" to ``errors`` of a job it accepted."""
        return answer.get("job_id") not in (None, 0)

    def nodes(self, answer):
        return answer.get("nodes", [])

    def jobs(self, answer):
        return answer.get("jobs", [])

    def partitions(self, answer):
        return answer.get("partitions", [])

    def db_path(self, what):
        return f"/slurmdb/{self.version}/{what}"

    def db_jobs_query(self, job_ids):
        # "step" takes a comma-separated list of job ids; the comma must be escaped.
        return "jobs?skip_steps=true&step=" + "%2C".join(str(int(j)) for j in job_ids)

    def finished_job(self, job):
        """One job of slurmdbd's answer as ``parse.parse_sacct_completion`` gives it."""
        state = (job.get("state") or {}).get("current") or ""
        state = state.split()[0] if state else ""
        times = job.get("time") or {}
        nodes = job.get("nodes")
        return {"state": state, "exit_code": self._exit_code(job.get("exit_code"), state),
                "started_at": utc_from_epoch(times.get("start")), "ended_at": utc_from_epoch(times.get("end")),
                "nodes": None if nodes in (None, "", "(null)", "None assigned") else nodes}

    @staticmethod
    def _exit_code(value, state):
        """``code:signal`` as sacct prints it. Slurm 22.05's v0.0.38 reports every job's
        exit code as ``SUCCESS``/0 (a FAILED job's too): a success that contradicts the
        state is unknown (None) rather than a wrong "0:0"."""
        if not isinstance(value, dict):
            return None
        code = value.get("return_code") or 0
        signal = value.get("signal")
        signal = (signal.get("signal_id") if isinstance(signal, dict) else signal) or 0
        if value.get("status") == "SUCCESS" and code == 0 and state not in ("COMPLETED", "CANCELLED"):
            return None
        return f"{code}:{signal}"

    def association(self, item):
        """One association as ``client.CommandBackend.associations`` gives it."""
        default = item.get("default") or {}
        return {"cluster": item.get("cluster"), "account": item.get("account"),
                "partition": item.get("partition") or None, "qos": sorted(q for q in item.get("qos") or [] if q),
                "default_qos": default.get("qos") or None}


# Newest first: the first one the server answers is used.
API_VERSIONS = (ApiV0038,)


class SlurmRest:
    """The calls the portal makes to slurmrestd. ``url`` is e.g.
    ``http://127.0.0.1:6820`` or ``unix:/run/slurmrestd/slurmrestd.socket``;
    ``signer`` a ``TokenSigner``."""

    def __init__(self, url, signer, *, root_user="root", timeout=30.0, connect_timeout=3.0,
                 pool_size=8, versions=API_VERSIONS, observe=None):
        """``observe(call, seconds, outcome)`` is told every call (metrics): the call is
        the method and the path's first word (``POST job``, ``GET jobs``)."""
        self._url = url.rstrip("/")
        # A ping decides whether slurmrestd is used at all: a hung one must not hold up the choice.
        self._ping_timeout = min(5.0, timeout)
        self._signer = signer
        self._root = root_user
        self._versions = versions
        self._observe = observe or (lambda call, seconds, outcome: None)
        self._api = None
        self._api_lock = threading.Lock()
        self._http = ConnectionPool(self._url, size=pool_size, connect_timeout=connect_timeout,
                                    read_timeout=timeout)

    def close(self):
        self._http.close()

    @property
    def version(self):
        return self._adapter().version

    def ping(self):
        """slurmctld's answer through slurmrestd; raises when it is not up."""
        answer = self._call("GET", self._adapter().path("ping"), self._root, timeout=self._ping_timeout)
        pings = answer.get("pings") or []
        if not any(p.get("ping") == "UP" for p in pings):
            raise SlurmUnavailable("slurmctld does not answer slurmrestd's ping.")
        return pings

    def submit(self, user, job, script, meanwhile=None):
        """Submits ``script`` with the job description ``job`` (the REST API's
        fields, ``environment`` required) as ``user``; returns the job id.
        ``meanwhile()`` runs while slurmctld works on the job."""
        api = self._adapter()
        answer = self._call("POST", api.path("job/submit"), user, body=api.submit_body(job, script),
                            done=api.submitted, meanwhile=meanwhile)
        return api.job_id(answer)

    def job(self, user, job_id):
        """One job as ``user`` sees it, or None when Slurm does not know it."""
        api = self._adapter()
        try:
            answer = self._call("GET", api.path(f"job/{int(job_id)}"), user)
        except SlurmRefused as error:
            if getattr(error, "slurm_errno", None) == _UNKNOWN_JOB:
                return None
            raise
        jobs = api.jobs(answer)
        return jobs[0] if jobs else None

    def jobs(self):
        """Every job Slurm still knows, seen with a root token (the shared snapshot)."""
        api = self._adapter()
        return api.jobs(self._call("GET", api.path("jobs"), self._root))

    def cancel(self, user, job_id):
        self._call("DELETE", self._adapter().path(f"job/{int(job_id)}"), user)

    def partitions(self):
        api = self._adapter()
        return api.partitions(self._call("GET", api.path("partitions"), self._root))

    def nodes(self):
        api = self._adapter()
        return api.nodes(self._call("GET", api.path("nodes"), self._root))

    def finished(self, job_ids):
        """slurmdbd's record of each job, by id (``parse_sacct_completion``'s shape), read
        with a root token. Raises ``SlurmdbMissing`` without the ``/slurmdb/`` part."""
        api = self._adapter()
        answer = self._db_call(api.db_path(api.db_jobs_query(job_ids)), self._root)
        wanted = {str(j) for j in job_ids}
        # Array tasks and requeued runs come as more records of one id: the last one counts.
        return {str(job.get("job_id")): api.finished_job(job) for job in answer.get("jobs") or []
                if str(job.get("job_id")) in wanted}

    def associations(self, user):
        """``user``'s associations, asked with ``user``'s own token (what slurmdbd shows them)."""
        api = self._adapter()
        answer = self._db_call(api.db_path(f"associations?user={urllib.parse.quote(user)}"), user)
        return [api.association(item) for item in answer.get("associations") or [] if item.get("user") == user]

    def _db_call(self, path, user):
        status, data = self._request("GET", path, user)
        if status == 404:
            raise SlurmdbMissing("slurmrestd has no /slurmdb/ API (no openapi/dbv plugin loaded).")
        try:
            return self._answer(status, data)
        except SlurmRefused as error:
            if getattr(error, "slurm_errno", None) == _NOTHING_FOUND:
                return {}
            raise

    def _adapter(self):
        with self._api_lock:
            if self._api is None:
                self._api = self._probe()
            return self._api

    def _probe(self):
        """The newest API version the server offers: an unknown path is a 404."""
        for cls in self._versions:
            api = cls()
            status, _ = self._request("GET", api.path("ping"), self._root, timeout=self._ping_timeout)
            if status != 404:
                return api
        offered = ", ".join(cls.version for cls in self._versions)
        raise SlurmUnavailable(f"slurmrestd offers none of the API versions {offered}.")

    def _request(self, method, path, user, body=None, timeout=None, meanwhile=None):
        """``(status, body)``; ``meanwhile()`` runs once the request is sent, before the answer is read."""
        headers = {"Accept": "application/json", "X-SLURM-USER-NAME": user,
                   "X-SLURM-USER-TOKEN": self._signer.token(user)}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        # The label names the call, never its query (job ids would make endless labels).
        parts = path.split("?")[0].split("/")
        call = f"{method} {'db ' if parts[1:2] == ['slurmdb'] else ''}{parts[3] if len(parts) > 3 else path}"
        started = time.monotonic()
        outcome = "error"
        try:
            exchange = self._http.send(method, path, body=data, headers=headers, read_timeout=timeout)
            if meanwhile is not None:
                meanwhile()
            status, answer = exchange.receive()
            outcome = str(status)
        except Unreachable as error:
            log.warning("slurmrestd at %s cannot be reached: %s", self._url, error)
            raise SlurmUnavailable("slurmrestd cannot be reached.") from None
        except NoAnswer as error:
            if method == "POST":
                # Sent, but no answer: the job may exist. The caller looks for it by its comment.
                log.warning("slurmrestd at %s did not answer a %s: %s", self._url, path, error)
                raise SlurmAnswerLost(f"slurmrestd did not answer ({str(error).split(':')[0]}).") from None
            # The answer does not name the address: where slurmrestd listens is not the caller's business.
            log.warning("slurmrestd at %s cannot be reached: %s", self._url, error)
            raise SlurmUnavailable(f"slurmrestd cannot be reached ({str(error).split(':')[0]}).") from None
        finally:
            self._observe(call, time.monotonic() - started, outcome)
        return status, answer

    def _call(self, method, path, user, body=None, done=None, timeout=None, meanwhile=None):
        """The JSON answer; ``done(answer)`` tells an answer that succeeded despite notes in ``errors``."""
        status, data = self._request(method, path, user, body, timeout, meanwhile)
        return self._answer(status, data, done)

    def _answer(self, status, data, done=None):
        if status in (401, 403):
            # Plain text "Authentication failure": a key that does not match slurmctld's.
            raise SlurmUnavailable("slurmrestd refused the portal's token (is the JWT key slurmctld's?).")
        try:
            answer = json.loads(data)
        except ValueError:
            raise SlurmUnavailable(f"slurmrestd answered HTTP {status} without JSON.") from None
        errors = [e for e in answer.get("errors") or [] if isinstance(e, dict)]
        if errors and status < 400 and done is not None and done(answer):
            return answer
        if errors:
            # Slurm answers with HTTP 500 and its reasons in ``errors``, for a refusal and an outage alike.
            first = errors[0]
            reason = "; ".join(filter(None, (e.get("description") or e.get("error") for e in errors)))
            number = first.get("error_number", first.get("errno", first.get("error_code")))
            # 400: slurmrestd could not read the job description (numbered -1 too): a refusal.
            if status != 400 and _is_outage(number):
                raise SlurmUnavailable("slurmrestd cannot reach slurmctld, or slurmctld refused the portal's "
                                       "token (is the JWT key slurmctld's?).")
            refused = SlurmRefused(reason[:1000] or "Slurm gave no reason.")
            refused.slurm_errno = number
            raise refused
        if status >= 400:
            raise SlurmUnavailable(f"slurmrestd answered HTTP {status}.")
        return answer
