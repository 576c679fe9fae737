"""Submitting jobs and watching them (domain code: no HTTP here).

Submit, in order: check every field (nothing runs before the whole request is
valid), make the job folder owned by the user with what the job reads (the
user's script), hand the job to Slurm as the user and, while Slurm works on it,
write the folder's batch script and submission record; then write the job row.
The submission id also goes to Slurm in ``--comment``: if Slurm's answer is lost
(timeout, crash, database failure), that id finds the job again, right away
and later in ``JobMonitor``, which records it from the folder's record. A
refused submission leaves nothing behind: no row, no folder.
"""

import dataclasses
import datetime
import functools
import json
import logging
import os
import posixpath
import pwd
import re
import uuid

import peewee

from ..auth import User
from ..errors import Conflict, NotFound, PermissionDenied, ServiceUnavailable, ValidationError
from ..models.base import insert_row, isoformat, rebuildable_transaction, utcnow
from ..models.jobs import Job
from ..slurm import directives
from ..slurm import script as batch
from ..slurm.backend import COMMENT_PREFIX
from ..slurm.parse import FINAL_STATES
from ..slurm.runner import SlurmAnswerLost, SlurmRefused, SlurmUnavailable
from . import listing
from .inputs import InputFiles
from .reasons import insight_fields
from .request import check_array_size, check_resources, job_spec, summary, type_errors

log = logging.getLogger("hpcportal.jobs")

BATCH_SCRIPT = "job.sbatch"
USER_SCRIPT = "script.sh"
# What was asked, kept beside the job: a job whose sbatch answer was lost is
# recorded from it once Slurm shows the job (found by its --comment).
SUBMISSION_RECORD = "submission.json"
# Fields of the record copied to the job row (identity fields come from Slurm).
RECORD_FIELDS = ("submission_id", "user", "uid", "name", "partition", "nodes", "cpus", "memory", "time_limit",
                 "account", "qos", "gpus", "image", "template_id", "template_version", "parameters", "files",
                 "client_job_id", "dependency", "array")
_REQUEST_FIELD = {"overrides.job_name": "jobName", "overrides.jobName": "jobName", "overrides.partition": "partition",
                  "overrides.nodes": "nodes", "overrides.cpus": "cpus", "overrides.memory": "memory",
                  "overrides.time": "time", "overrides.account": "account", "overrides.qos": "qos",
                  "overrides.gpus": "gpus", "overrides.dependency": "dependency", "overrides.array": "array"}
_CLIENT_JOB_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")


def owner_of(row):
    """The job's unix user, as a User (for reading its files)."""
    try:
        entry = pwd.getpwnam(row.user)
    except KeyError:
        raise NotFound(f"The owner of job {row.slurm_job_id} no longer exists.", code="job_not_found") from None
    return User(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid,
                groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)), home=entry.pw_dir)


def serialize_job(row, live=None):
    """The job object of the API; ``live``: squeue's view, when Slurm still shows the job."""
    state, reason, exit_code = row.state, row.reason, row.exit_code
    started, ended, nodes = row.started_at, row.ended_at, row.node_list
    if live:
        state, reason, exit_code = live["state"], live["reason"], live["exit_code"]
        started, ended, nodes = live["started_at"] or started, live["ended_at"] or ended, live["nodes"] or nodes
    if state in ("PENDING",):
        started = ended = None
    elif state not in FINAL_STATES:
        ended = None
    elapsed = None
    if started:
        elapsed = int(((ended or utcnow()) - started).total_seconds())
    return {
        "jobId": row.slurm_job_id,
        "submissionId": row.submission_id,
        "name": row.name,
        "user": row.user,
        "partition": row.partition,
        "state": state,
        "reason": reason,
        "exit_code": exit_code,
        "submitted_at": isoformat(row.submitted_at),
        "started_at": isoformat(started),
        "ended_at": isoformat(ended),
        "elapsed": elapsed,
        "nodes": nodes,
        "resources": {"nodes": row.nodes, "cpus": row.cpus, "memory": row.memory, "time": row.time_limit,
                      "account": row.account, "qos": row.qos, "gpus": row.gpus},
        "image": row.image,
        "template": ({"id": row.template_id, "version": row.template_version} if row.template_id else None),
        **insight_fields(row, live, state, reason),
    }


class JobService:
    """``backends``: a ``BackendChoice`` (each call takes its Slurm backend from it once);
    ``folders``: JobFolders; ``images``, ``templates`` and ``uploads``: the catalogs and
    uploads a submission draws from."""

    def __init__(self, config, database, backends, folders, *, images, templates, uploads, metrics):
        self._config = config
        self._database = database
        self.backends = backends
        self.folders = folders
        self._images = images
        self._templates = templates
        self._uploads = uploads
        self._metrics = metrics
        self._inputs = InputFiles(uploads, config.slurm.data_roots)

    # -- submit ------------------------------------------------------------------

    def submit(self, user, body):
        if user.uid == 0 or user.uid < self._config.users.min_uid:
            raise PermissionDenied("System accounts may not submit jobs.", code="user_denied")
        if not isinstance(body, dict):
            raise ValidationError("The request body must be a JSON object.")
        try:
            plan = self._plan(user, body, self.backends.current())
        except (ValidationError, PermissionDenied):
            self._count("refused")
            raise
        return self._run(user, plan)

    def _plan(self, user, body, slurm):
        """Everything the submission needs, checked; a ValidationError lists every bad field.
        Only a request valid in itself asks Slurm anything (its partitions, last)."""
        errors = type_errors(body)
        template_id = body.get("templateId")
        use_template = isinstance(template_id, str) and template_id != ""
        script_options = {}
        if not use_template and isinstance(body.get("script"), str):
            try:
                script_options = directives.script_options(body["script"])
            except ValidationError as exc:
                errors.update(exc.errors or {})
        try:
            resources = check_resources(body, max_script_size=self._config.slurm.max_script_size,
                                        max_array_size=self._config.jobs.max_array_size,
                                        need_name=not use_template and "job-name" not in script_options,
                                        need_script=not use_template)
        except ValidationError as exc:
            errors = {**(exc.errors or {}), **errors}
            resources = {}
        client_job_id = body.get("jobId")
        if client_job_id not in (None, "") and not (isinstance(client_job_id, str)
                                                    and _CLIENT_JOB_ID.match(client_job_id)):
            errors.setdefault("jobId", "must be the dashboard's temporary id (letters, digits and . _ : -)")
            client_job_id = None
        files, template_files = self._inputs.check(user, body, errors)
        image = None
        if not use_template:
            image = self._check_image(body.get("apptainerImage"), errors)
        elif body.get("apptainerImage") not in (None, {}, ""):
            errors["apptainerImage"] = "a template chooses its own image; leave apptainerImage out"
        if errors:
            errors = dict(sorted(errors.items()))
            raise ValidationError(summary(errors), errors=errors)
        submission_id = uuid.uuid4().hex
        job_dir = self.folders.path(user.name, submission_id)
        # The body's own values make its options; the script's #SBATCH lines fill in where it is silent.
        plan = {"submission_id": submission_id, "job_dir": job_dir,
                "resources": {**directives.recorded_values(script_options),
                              **{k: v for k, v in resources.items() if v is not None}},
                "body_resources": resources, "script_options": script_options,
                "files": files, "image": image, "client_job_id": client_job_id or None,
                "template": None, "parameters": None, "template_files": template_files, "slurm": slurm}
        if use_template:
            self._render_template(user, body, plan)
        self._check_partition(plan, use_template)
        check_array_size(plan["resources"].get("array"), self._config.jobs.max_array_size)
        if not use_template:
            self._build_script(plan)
        return plan

    def _check_partition(self, plan, use_template):
        """The job's partition exists (the default one is written out) and its image may run there."""
        resources = plan["resources"]
        partitions = plan["slurm"].partitions()
        names = [p["name"] for p in partitions]
        partition = resources.get("partition")
        if partition is not None and partition not in names:
            reason = f"there is no partition {partition!r} (available: {', '.join(names)})"
            raise ValidationError(summary({"partition": reason}), errors={"partition": reason})
        if partition is None and not use_template:
            partition = next((p["name"] for p in partitions if p["default"]), None)
            if partition is not None:
                # Written out, so the job row names the partition the job runs in.
                resources["partition"] = plan["body_resources"]["partition"] = partition
        image = plan["image"]
        allowed = image.get("partitions") if image and not use_template else None
        if partition and allowed is not None and partition not in allowed:
            reason = (f"image {image['id']!r} may not run on partition {partition!r} "
                      f"(allowed: {', '.join(allowed) or 'none'})")
            raise ValidationError(summary({"apptainerImage": reason}), errors={"apptainerImage": reason})

    def _job_options(self, plan):
        job_dir = plan["job_dir"]
        if not batch.SAFE_PATH.match(job_dir):
            raise ServiceUnavailable(f"The job folder {job_dir!r} has characters sbatch cannot take; "
                                     "check the paths.uploads setting.", code="unsafe_config")
        return {"output": f"{job_dir}/slurm-%j.out", "error": f"{job_dir}/slurm-%j.err", "workdir": job_dir,
                "comment": COMMENT_PREFIX + plan["submission_id"], "export": "NONE"}

    def _portal_environment(self, plan):
        return {"HPCPORTAL_SUBMISSION_ID": plan["submission_id"], "HPCPORTAL_JOB_DIR": plan["job_dir"]}

    def _binds(self, plan):
        binds = [plan["job_dir"], *self._config.slurm.apptainer_binds]
        for path in plan["files"]:
            folder = posixpath.dirname(path)
            if ":" in folder:
                raise ValueError(f"apptainer would read the ':' in the folder of {path} as a bind's target")
            if folder not in binds:
                binds.append(folder)
        return binds

    def _build_script(self, plan):
        environment = {}
        for index, path in enumerate(plan["files"]):
            environment[f"INPUT_FILE_{index}"] = path
        environment["INPUT_FILE_COUNT"] = str(len(plan["files"]))
        try:
            spec = job_spec(plan["body_resources"], script_path=posixpath.join(plan["job_dir"], USER_SCRIPT),
                            environment=environment, image=plan["image"], apptainer=self._config.slurm.apptainer,
                            binds=self._binds(plan) if plan["image"] else ())
        except ValueError as exc:
            raise ValidationError(f"The job cannot be written safely: {exc}.") from None
        self._write_job(plan, spec.with_script_options(plan["script_options"]))

    def _write_job(self, plan, spec):
        """The batch script of ``spec`` with the portal's own options and variables added."""
        spec = dataclasses.replace(spec, **self._job_options(plan),
                                   environment={**self._portal_environment(plan), **spec.environment})
        try:
            plan["batch_script"] = batch.render_batch_script(spec)
        except ValueError as exc:
            raise ValidationError(f"The job cannot be written safely: {exc}.") from None
        plan["spec"] = spec
        plan["user_script"] = spec.script
        plan["user_script_path"] = spec.script_path

    def _render_template(self, user, body, plan):
        resources = plan["body_resources"]
        overrides = {}
        for key, field in (("job_name", "jobName"), ("partition", "partition"), ("nodes", "nodes"),
                           ("cpus", "cpus"), ("memory", "memory"), ("time", "time"), ("account", "account"),
                           ("qos", "qos"), ("gpus", "gpus"), ("dependency", "dependency"), ("array", "array")):
            if resources.get(key) is not None:
                overrides[field] = resources[key]
        request = {"parameters": body.get("parameters") or {}, "files": plan["template_files"],
                   "overrides": overrides}
        version = body.get("templateVersion") or None
        try:
            extra_binds = [b for b in self._binds(plan) if b != plan["job_dir"]]
        except ValueError as exc:
            raise ValidationError(f"The job cannot be written safely: {exc}.") from None
        try:
            result = self._templates.render(
                user, body["templateId"], request, version=version, job_dir=plan["job_dir"],
                apptainer_command=self._config.slurm.apptainer, extra_binds=extra_binds, lookup_file=None)
        except NotFound as exc:
            raise ValidationError(exc.message, errors={"templateId": exc.message}) from None
        except ValidationError as exc:
            # The template names fields as it knows them ("overrides.cpus"); the
            # dashboard knows them by the request's names ("cpus").
            renamed = {_REQUEST_FIELD.get(key, key): reason for key, reason in (exc.errors or {}).items()}
            raise ValidationError(exc.message, errors=renamed or None) from None
        self._write_job(plan, result.spec)
        slurm_values = result.get("slurm") or {}
        resources = plan["resources"]
        resources.update({
            "job_name": result.get("job_name") or body["templateId"],
            "partition": slurm_values.get("partition") or resources.get("partition"),
            "nodes": slurm_values.get("nodes", resources.get("nodes")),
            "cpus": slurm_values.get("cpus", resources.get("cpus")),
            "memory": slurm_values.get("memory", resources.get("memory")),
            "time": slurm_values.get("time", resources.get("time")),
            "account": slurm_values.get("account", resources.get("account")),
            "qos": slurm_values.get("qos", resources.get("qos")),
            "gpus": slurm_values.get("gpus", resources.get("gpus")),
            "dependency": slurm_values.get("dependency", resources.get("dependency")),
            "array": slurm_values.get("array", resources.get("array")),
        })
        plan["image"] = result.get("image")
        plan["template"] = result.get("template") or {"id": body["templateId"], "version": version}
        plan["parameters"] = result.get("parameters")

    def _check_image(self, given, errors):
        """The catalog's image for ``given`` (its partitions are checked once the partition is known)."""
        if given in (None, {}, ""):
            return None
        if not isinstance(given, dict):
            errors["apptainerImage"] = "must be an object with the image's id"
            return None
        image_id = given.get("id")
        if not isinstance(image_id, str) or not image_id:
            errors["apptainerImage"] = "needs the id of an image from the catalog"
            return None
        image = self._images.get(image_id)
        if image is None:
            invalid = self._images.get(image_id, include_invalid=True)
            if invalid is not None:
                errors["apptainerImage"] = f"image {image_id!r} is not a valid image: {invalid.get('error')}"
            else:
                errors["apptainerImage"] = f"there is no image {image_id!r} in the catalog"
            return None
        path = given.get("path")
        if path not in (None, "") and (not isinstance(path, str) or os.path.normpath(path) != image["path"]):
            errors["apptainerImage"] = (f"image {image_id!r}: path {path!r} is not the catalog's path "
                                        f"{image['path']}")
            return None
        if not batch.SAFE_PATH.match(image["path"]):
            errors["apptainerImage"] = f"image {image_id!r} has a path the portal cannot pass to apptainer"
            return None
        keys = ("id", "name", "path", "type", "version", "gpu", "partitions")
        return {k: image.get(k) for k in keys}

    def _run(self, user, plan):
        submission_id = plan["submission_id"]
        resources = plan["resources"]
        template = plan["template"] or {}
        record = {
            "submission_id": submission_id, "user": user.name, "uid": user.uid,
            "name": resources.get("job_name") or "job", "partition": resources.get("partition"),
            "nodes": resources.get("nodes"), "cpus": resources.get("cpus"), "memory": resources.get("memory"),
            "time_limit": resources.get("time"), "account": resources.get("account"), "qos": resources.get("qos"),
            "gpus": resources.get("gpus"), "image": plan["image"], "template_id": template.get("id"),
            "template_version": template.get("version"), "parameters": plan["parameters"],
            "files": plan["files"], "client_job_id": plan["client_job_id"],
            "dependency": resources.get("dependency"), "array": resources.get("array"),
            "submitted_at": isoformat(utcnow()),
        }
        # What the job reads must be in its folder before Slurm may start it: the user's
        # script. The batch script (Slurm keeps its own copy) and the record are written
        # while Slurm works on the submission, before its answer is read.
        first = {}
        if plan.get("user_script") is not None:
            name = posixpath.basename(plan.get("user_script_path") or USER_SCRIPT)
            first[name] = (plan["user_script"].encode("utf-8"), 0o750)
        with self.folders.make(user, submission_id, first) as folder:
            job_id = self._hand_to_slurm(user, plan, folder, record)
        self.record(record, job_id, folder.path)
        self._count("ok")
        return {"success": True, "jobId": job_id, "message": f"Job {job_id} submitted successfully",
                "submissionId": submission_id}

    def _hand_to_slurm(self, user, plan, folder, record):
        """Slurm's job id for the submission; its folder's records are written meanwhile."""
        submission_id = plan["submission_id"]
        meanwhile = functools.partial(self._write_records, user, folder, plan["batch_script"], record)
        slurm = plan["slurm"]
        try:
            return slurm.submit(user, plan["spec"], plan["batch_script"], meanwhile=meanwhile)
        except SlurmAnswerLost as exc:
            job_id = self._recover_now(slurm, submission_id)
            if job_id is None:
                self._count("failed")
                # The folder stays: JobMonitor records the job if it shows up in Slurm.
                raise ServiceUnavailable(
                    f"{exc.message} The portal will list the job if Slurm accepted it "
                    f"(submission {submission_id}).", code=exc.code,
                    extra={"submissionId": submission_id}, headers={"Retry-After": "10"}) from None
            return job_id
        except SlurmRefused:
            self.folders.remove(user.name, submission_id)
            self._count("refused")
            raise
        except BaseException:
            # sbatch said it could not reach the controller (or never ran): Slurm has no job.
            self.folders.remove(user.name, submission_id)
            self._count("failed")
            raise

    def _write_records(self, user, folder, batch_script, record):
        """The job folder's batch script and submission record. Runs while Slurm works on
        the job, which may exist by now: a failure is logged, never raised (the job row,
        written next, holds what the record does)."""
        try:
            folder.add({BATCH_SCRIPT: (batch_script.encode("utf-8"), 0o640),
                        SUBMISSION_RECORD: (json.dumps(record, ensure_ascii=False).encode("utf-8"), 0o640)})
        except Exception:
            log.exception("job folder %s of %s: its batch script and record not written",
                          record["submission_id"], user.name)

    def _recover_now(self, slurm, submission_id):
        try:
            found = slurm.find_by_submission(submission_id)
        except SlurmUnavailable:
            return None
        return found["job_id"] if found else None

    def record(self, record, job_id, job_dir):
        """The job row for Slurm's ``job_id``; True when written (False: a row exists already,
        or the database failed, and then JobMonitor writes it from the job's comment later)."""
        fields = {k: record.get(k) for k in RECORD_FIELDS}
        submitted = _parse_time(record.get("submitted_at")) or utcnow()
        try:
            # Slurm holds the job and its comment names the submission: JobMonitor.recover
            # rebuilds a row a power cut took, so the answer need not wait for the disk.
            with rebuildable_transaction(self._database):
                insert_row(Job, {**fields, "slurm_job_id": str(job_id), "job_dir": job_dir,
                                 "script_path": posixpath.join(job_dir, BATCH_SCRIPT), "submitted_at": submitted,
                                 "stdout_path": posixpath.join(job_dir, f"slurm-{job_id}.out"),
                                 "stderr_path": posixpath.join(job_dir, f"slurm-{job_id}.err")})
        except peewee.IntegrityError:
            return False  # recorded already (the monitor, or another head, was quicker)
        except peewee.PeeweeException:
            log.exception("job %s (submission %s) not recorded yet", job_id, record.get("submission_id"))
            return False
        if not record.get("client_job_id") and not record.get("files"):
            return True
        try:  # uploaded with the dashboard's temporary id, or given as inputs
            with self._database.atomic():
                if record.get("client_job_id"):
                    self._uploads.link_job(record["user"], record["client_job_id"], str(job_id))
                self._uploads.link_files(record["user"], record.get("files") or [], str(job_id))
        except peewee.PeeweeException:
            log.exception("could not link the uploads of job %s", job_id)
        return True

    def read_record(self, owner, submission_id):
        """The submission record the job folder holds, or None."""
        text = self._read_text(owner, submission_id, SUBMISSION_RECORD)
        if not text:
            return None
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            return None
        return record if isinstance(record, dict) else None

    def _count(self, outcome):
        self._metrics.submissions.labels(outcome).inc()

    # -- reading -----------------------------------------------------------------

    def _live(self, slurm=None):
        """(the snapshot's jobs or None, note)."""
        try:
            return (slurm or self.backends.current()).snapshot(wait=False).jobs, None
        except SlurmUnavailable as exc:
            return None, exc.message

    def list(self, user, *, all_users=False, state=None, limit=100, offset=0):
        if all_users and not self._sees_all(user):
            raise PermissionDenied("Only administrators may list every user's jobs (when the site "
                                   "allows it: security.admins_see_all_jobs).", code="admin_only")
        jobs, note = self.jobs_of(None if all_users else user.name)
        if state:
            wanted = {s.strip().upper() for s in state.split(",") if s.strip()}
            jobs = [j for j in jobs if j["state"] in wanted]
        answer = {"jobs": jobs[offset:offset + limit], "total": len(jobs)}
        if note:
            answer["slurm"] = {"reachable": False, "message": note}
        return answer

    def jobs_of(self, name=None):
        """``(job answers, note)``: every job of the user ``name`` (None: everyone's) Slurm
        knows, the portal's and the others (source: cluster), newest first."""
        query = Job.select()
        if name is not None:
            query = query.where(Job.user == name)
        rows = list(query.order_by(Job.submitted_at.desc(), Job.id.desc()))
        live, note = self._live()
        return listing.merge(rows, live, serialize_job, user=name, cluster=self._config.jobs.cluster_jobs), note

    def _sees_all(self, user):
        return user.admin and self._config.security.admins_see_all_jobs

    def row_for(self, user, job_id):
        """The portal's row of ``job_id``, one task of a portal array, or a cluster job (an
        unsaved row, ``submission_id`` None) the snapshot shows."""
        row = None
        if isinstance(job_id, str) and job_id.isdigit():
            def row_of(slurm_job_id):
                return Job.select().where(Job.slurm_job_id == slurm_job_id).order_by(Job.id.desc()).first()
            row = row_of(job_id) or listing.find(job_id, self._live()[0], row_of,
                                                 cluster=self._config.jobs.cluster_jobs)
        if row is None or (row.user != user.name and not self._sees_all(user)):
            raise NotFound(f"There is no job {job_id} of yours.", code="job_not_found")
        return row

    def live_state(self, row, slurm=None):
        live, _ = self._live(slurm)
        return live.get(row.slurm_job_id) if live else None

    def detail(self, user, job_id):
        row = self.row_for(user, job_id)
        if row.submission_id is None:
            return self._cluster_detail(row)
        job = serialize_job(row, self.live_state(row))
        owner = owner_of(row)
        job.update({
            "script": self._read_text(owner, row.submission_id, BATCH_SCRIPT),
            "user_script": self._read_text(owner, row.submission_id, USER_SCRIPT),
            "files": row.files or [],
            "parameters": row.parameters,
            "job_dir": row.job_dir,
            "script_path": row.script_path,
            "stdout_path": row.stdout_path,
            "stderr_path": row.stderr_path,
            "client_job_id": row.client_job_id,
        })
        return job

    def _cluster_detail(self, row):
        live = self.live_state(row)
        job = listing.serialize_cluster(live) if live else {"jobId": row.slurm_job_id, "source": "cluster"}
        job.update({"script": None, "user_script": None, "files": [], "parameters": None,
                    "job_dir": row.job_dir or None, "script_path": None, "stdout_path": row.stdout_path,
                    "stderr_path": row.stderr_path, "client_job_id": None})
        return job

    def _read_text(self, owner, submission_id, name, limit=1024 * 1024):
        try:
            fd = self.folders.open_file(owner, submission_id, name)
        except NotFound:  # a planted file (UnsafePath) is refused to the caller, not hidden
            return None
        with os.fdopen(fd, "rb") as handle:
            return handle.read(limit).decode("utf-8", errors="replace")

    def cancel(self, user, job_id):
        row = self.row_for(user, job_id)
        if row.user != user.name:
            raise PermissionDenied("Jobs are cancelled by their owners.", code="not_owner")
        slurm = self.backends.current()
        live = self.live_state(row, slurm)
        state = live["state"] if live else row.state
        if state in FINAL_STATES:
            raise Conflict(f"Job {row.slurm_job_id} has already ended ({state}).", code="job_finished")
        try:
            slurm.cancel(user, row.slurm_job_id)
        except SlurmRefused as exc:
            if "already completing or completed" in exc.message or "Invalid job id" in exc.message:
                raise Conflict(f"Job {row.slurm_job_id} has already ended: {exc.message}",
                               code="job_finished") from None
            raise
        return {"success": True, "jobId": row.slurm_job_id, "message": f"Job {row.slurm_job_id} cancelled"}

    def partitions(self):
        items = []
        images = self._images.images()
        for partition in self.backends.current().partitions():
            items.append({**partition,
                          "images": [i["id"] for i in images if partition["name"] in (i.get("partitions") or [])]})
        return items

    def associations(self, user):
        items, note = self.backends.current().associations(user)
        answer = {"associations": items, "accounts": sorted({a["account"] for a in items}),
                  "qos": sorted({q for a in items for q in a["qos"]})}
        if note:
            answer["note"] = note
        return answer


def _parse_time(text):
    try:
        return datetime.datetime.fromisoformat(str(text).rstrip("Z"))
    except ValueError:
        return None
