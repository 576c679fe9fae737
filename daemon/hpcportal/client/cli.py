"""``hpcportal``: the portal from a terminal, on top of ``hpcportal.client.Client``.

Exit status: 0 done; 1 the portal (or the network) refused; 2 a wrong command
line; 3 a job waited for ended other than COMPLETED; 130 interrupted.
"""

import argparse
import os
import sys

from .api import FINAL_STATES, Client
from .display import Progress, dumps, size, table
from .errors import ClientError

EXIT_ERROR, EXIT_USAGE, EXIT_JOB_FAILED, EXIT_INTERRUPTED = 1, 2, 3, 130
# Not HPCPORTAL_*: the daemon reads those as its own settings.
URL_VARIABLE, TOKEN_VARIABLE, TOKEN_FILE_VARIABLE = "PORTAL_URL", "PORTAL_TOKEN", "PORTAL_TOKEN_FILE"


def main(argv=None, out=None, err=None):
    out, err = out or sys.stdout, err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    # Options given before or after the command's name (set_defaults would reach the
    # shared option objects and reset them in the command's own parser).
    args.json, args.quiet = getattr(args, "json", False), getattr(args, "quiet", False)
    try:
        client = Client(_url(args), _token(args))
        return args.run(client, args, out, err) or 0
    except ClientError as exc:
        err.write(f"hpcportal: error: {exc.message}\n")
        return EXIT_USAGE if exc.code == "usage" else EXIT_ERROR
    except OSError as exc:  # a local file: the download's folder, a full disk
        err.write(f"hpcportal: error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        hint = " (run the same command again to resume the upload)" if args.command == "upload" else ""
        err.write(f"\nhpcportal: interrupted{hint}\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `hpcportal logs 12 | head`: the reader has gone. Python's own advice: point stdout
        # at /dev/null so that flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _url(args):
    url = getattr(args, "url", None) or os.environ.get(URL_VARIABLE)
    if not url:
        raise ClientError(f"no portal URL: give --url or set {URL_VARIABLE}", code="usage")
    if not url.startswith(("http://", "https://")):
        raise ClientError(f"the portal URL must start with http:// or https:// (got {url!r})", code="usage")
    return url


def _token(args):
    token = getattr(args, "token", None)
    path = getattr(args, "token_file", None)
    if not token and not path:
        token = os.environ.get(TOKEN_VARIABLE)
        path = None if token else os.environ.get(TOKEN_FILE_VARIABLE)
    if not token and path:
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise ClientError(f"cannot read the token file {path}: {exc.strerror}", code="usage") from None
        if not token:
            raise ClientError(f"the token file {path} is empty", code="usage")
    if not token:
        raise ClientError(f"no token: give --token or --token-file, or set {TOKEN_VARIABLE} or "
                          f"{TOKEN_FILE_VARIABLE}", code="usage")
    return token


# -- commands -------------------------------------------------------------------------------------

def cmd_me(client, args, out, err):
    me = client.me()
    if args.json:
        out.write(dumps(me) + "\n")
        return
    groups = ", ".join(str(g) for g in me.get("groups") or []) or "-"
    out.write(f"{me['user']} (uid {me.get('uid')}, gid {me.get('gid')}), groups: {groups}"
              f"{', administrator' if me.get('admin') else ''}\n")


def cmd_images(client, args, out, err):
    images = client.images(partition=args.partition)
    if args.json:
        out.write(dumps(images) + "\n")
        return
    table(images, [("ID", lambda i: i.get("id")), ("TYPE", lambda i: i.get("type")),
                   ("VERSION", lambda i: i.get("version")), ("SIZE", lambda i: size(i.get("size"))),
                   ("PATH", lambda i: i.get("path"))], out)


def cmd_templates(client, args, out, err):
    templates = client.templates(category=args.category, source=args.source)
    if args.json:
        out.write(dumps(templates) + "\n")
        return
    table(templates, [("ID", lambda t: t.get("id")), ("VERSION", lambda t: t.get("version")),
                      ("CATEGORY", lambda t: t.get("category")), ("NAME", lambda t: t.get("name"))], out)


def cmd_upload(client, args, out, err):
    progress = Progress(os.path.basename(args.file), out=err, enabled=_progress_enabled(args, err))
    try:
        uploaded = client.upload(args.file, job_id=args.job_id, progress=progress,
                                 chunk_size=args.chunk_size, parallel=args.parallel)
    finally:
        progress.close()
    if args.json:
        out.write(dumps(uploaded) + "\n")
    else:
        out.write(f"{uploaded['file_id']}  {uploaded['filename']}  {size(uploaded['size'])}  "
                  f"sha256 {uploaded['sha256']}\n")


def cmd_files(client, args, out, err):
    files = client.files(job_id=args.job_id, file_type=args.type, limit=args.limit)
    if args.json:
        out.write(dumps(files) + "\n")
        return
    table(files, [("FILE_ID", lambda f: f.get("file_id")), ("SIZE", lambda f: size(f.get("size"))),
                  ("TYPE", lambda f: f.get("file_type")), ("JOB", lambda f: f.get("slurm_job_id") or f.get("job_id")),
                  ("CREATED", lambda f: f.get("created_at")), ("NAME", lambda f: f.get("filename"))], out)


def cmd_download(client, args, out, err):
    label = os.path.basename(args.target)
    progress = Progress(label, out=err, enabled=_progress_enabled(args, err))
    try:
        if args.job:
            written = client.download_result(args.job, args.target, args.output, progress=progress)
        else:
            written = client.download(args.target, args.output, progress=progress)
    finally:
        progress.close()
    if args.json:
        out.write(dumps({"path": os.path.abspath(written), "size": os.path.getsize(written)}) + "\n")
    else:
        out.write(f"{written}\n")


def cmd_results(client, args, out, err):
    files = client.job_files(args.jobid)
    if args.json:
        out.write(dumps(files) + "\n")
        return
    table(files, [("SIZE", lambda f: size(f.get("size"))), ("MODIFIED", lambda f: f.get("modified")),
                  ("PATH", lambda f: f.get("path"))], out)


def cmd_submit(client, args, out, err):
    script = _read_script(args.script) if args.script else None
    if script is None and not args.template:
        raise ClientError("submit needs a SCRIPT, or --template", code="usage")
    name = args.name
    if name is None and script is not None and not args.template and not Client.names_itself(script):
        name = "stdin" if args.script == "-" else os.path.basename(args.script)
    answer = client.submit(script, name=name, partition=args.partition, nodes=args.nodes, cpus=args.cpus,
                           memory=args.memory, time=args.time, account=args.account, qos=args.qos,
                           gpus=args.gpus, image=args.image, files=[_file_arg(f) for f in args.file],
                           template=args.template, template_version=args.template_version,
                           parameters=dict(_pair(p, "--param") for p in args.param) or None,
                           job_id=args.job_id)
    if not args.wait:
        out.write(dumps(answer) + "\n" if args.json else f"{answer['jobId']}\n")
        return
    if not args.json:
        err.write(f"submitted job {answer['jobId']}\n")
    return _wait(client, answer["jobId"], args, out, err)


def cmd_wait(client, args, out, err):
    return _wait(client, args.jobid, args, out, err)


def _wait(client, job_id, args, out, err):
    def changed(job):
        if not args.json and not args.quiet and job.get("state") not in FINAL_STATES:
            err.write(f"job {job_id}: {job.get('state')}\n")
    job = client.wait(job_id, interval=args.interval, timeout=args.timeout, on_change=changed)
    if args.json:
        out.write(dumps(job) + "\n")
    else:
        out.write(f"job {job_id} {job['state']} (exit code {job.get('exit_code') or '-'})\n")
    return 0 if job["state"] == "COMPLETED" else EXIT_JOB_FAILED


def cmd_jobs(client, args, out, err):
    jobs = client.jobs(state=args.state, limit=args.limit, all_users=args.all)
    if args.json:
        out.write(dumps(jobs) + "\n")
        return
    table(jobs, [("JOBID", lambda j: j.get("jobId")), ("STATE", lambda j: j.get("state")),
                 ("EXIT", lambda j: j.get("exit_code")), ("PARTITION", lambda j: j.get("partition")),
                 ("SUBMITTED", lambda j: j.get("submitted_at")), ("NAME", lambda j: j.get("name"))], out)


def cmd_show(client, args, out, err):
    job = client.job(args.jobid)
    if args.json:
        out.write(dumps(job) + "\n")
        return
    for key in ("jobId", "name", "user", "state", "reason", "exit_code", "partition", "nodes",
                "submitted_at", "started_at", "ended_at", "elapsed"):
        if key in job:
            out.write(f"{key + ':':14} {'-' if job[key] in (None, '') else job[key]}\n")
    image = job.get("image") or {}
    template = job.get("template") or {}
    if image:
        out.write(f"{'image:':14} {image.get('id') or image.get('path')}\n")
    if template:
        out.write(f"{'template:':14} {template.get('id')} {template.get('version') or ''}\n")
    for item in job.get("files") or []:
        out.write(f"{'file:':14} {item.get('storage_path') if isinstance(item, dict) else item}\n")


def cmd_logs(client, args, out, err):
    stream = "stderr" if args.stderr else "stdout"
    if not args.follow:
        text = client.logs(args.jobid, stream=stream)
        out.write(dumps({"jobId": args.jobid, "stream": stream, "data": text}) + "\n" if args.json else text)
        return
    for piece in client.follow(args.jobid, stream=stream):
        # --json follows as JSON lines, one per piece as it arrives.
        out.write(dumps({"jobId": args.jobid, "stream": stream, "data": piece}).replace("\n", " ") + "\n"
                  if args.json else piece)
        out.flush()


def cmd_cancel(client, args, out, err):
    answer = client.cancel(args.jobid)
    out.write(dumps(answer) + "\n" if args.json else f"{answer.get('message') or 'cancelled'}\n")


# -- arguments ------------------------------------------------------------------------------------

def _progress_enabled(args, err):
    if args.quiet or args.json and not args.progress:
        return False
    return True if args.progress else None  # None: on a terminal only


def _read_script(path):
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read the script {path}: {getattr(exc, 'strerror', None) or exc}",
                          code="usage") from None


def _pair(text, option):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ClientError(f"{option} expects NAME=VALUE (got {text!r})", code="usage")
    return key, value


def _file_arg(text):
    """``ID``, or ``SLOT=ID`` for a template's named file."""
    return _pair(text, "--file") if "=" in text else text


def _size_arg(text):
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    lowered = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = units.get(lowered[-1:], 1)
    number = lowered[:-1] if lowered[-1:] in units else lowered
    try:
        return int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 8MiB)") from None


def _common():
    """Options every command takes, before or after its name."""
    common = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    common.add_argument("--url", default=s, help=f"the portal's address (else ${URL_VARIABLE})")
    common.add_argument("--token", default=s, help=f"the Auth Portal's access token (else ${TOKEN_VARIABLE})")
    common.add_argument("--token-file", default=s, metavar="PATH",
                        help=f"read the token from a file (else ${TOKEN_FILE_VARIABLE})")
    common.add_argument("--json", action="store_true", default=s, help="print the API's JSON answer")
    common.add_argument("-q", "--quiet", action="store_true", default=s, help="no progress or state lines")
    return common


def build_parser():
    common = _common()
    parser = argparse.ArgumentParser(prog="hpcportal", parents=[common],
                                     description="The HPC portal from a terminal: files, images, "
                                                 "templates and Slurm jobs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, run, help_text):
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(run=run)
        return sub

    command("me", cmd_me, "who the token says you are")
    sub = command("images", cmd_images, "the Apptainer image catalog")
    sub.add_argument("--partition", help="only images fit for this partition")
    sub = command("templates", cmd_templates, "the job templates")
    sub.add_argument("--category")
    sub.add_argument("--source")

    sub = command("upload", cmd_upload, "upload a file (resumable: run again to resume)")
    sub.add_argument("file", metavar="FILE")
    sub.add_argument("--job-id", help="link the file to the dashboard's temporary job id")
    sub.add_argument("--chunk-size", type=_size_arg, help="e.g. 8MiB (the portal bounds it)")
    sub.add_argument("--parallel", type=int, default=4, help="chunks in flight at once (default 4)")
    sub.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")

    sub = command("files", cmd_files, "your uploaded files")
    sub.add_argument("--job-id")
    sub.add_argument("--type", help="archive, sif, mesh, data, script, text or binary")
    sub.add_argument("--limit", type=int)

    sub = command("download", cmd_download, "download an uploaded file, or with --job a job's result file")
    sub.add_argument("target", metavar="FILE_ID|PATH")
    sub.add_argument("--job", metavar="JOBID", help="download PATH from this job's folder")
    sub.add_argument("-o", "--output", help="where to write (a file or a folder; default: here)")
    sub.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")

    sub = command("submit", cmd_submit, "submit a batch job")
    sub.add_argument("script", metavar="SCRIPT", nargs="?", help="the job script ('-' for stdin)")
    sub.add_argument("--name", help="the job's name (default: the script's file name)")
    sub.add_argument("--partition")
    sub.add_argument("--nodes", type=int)
    sub.add_argument("--cpus", type=int, help="tasks per node")
    sub.add_argument("--memory", help="per node, e.g. 16G")
    sub.add_argument("--time", help="e.g. 01:00:00 or minutes")
    sub.add_argument("--account")
    sub.add_argument("--qos")
    sub.add_argument("--gpus", type=int)
    sub.add_argument("--image", metavar="IMAGE_ID", help="run the script in this catalog image")
    sub.add_argument("--file", action="append", default=[], metavar="FILE_ID|SLOT=FILE_ID",
                     help="an uploaded file for the job (repeatable)")
    sub.add_argument("--template", metavar="TEMPLATE_ID")
    sub.add_argument("--template-version")
    sub.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a template parameter (repeatable)")
    sub.add_argument("--job-id", help="the dashboard's temporary id; files uploaded with it are linked")
    _wait_options(sub, with_flag=True)

    sub = command("wait", cmd_wait, "wait until a job has ended (exit 0 only for COMPLETED)")
    sub.add_argument("jobid", metavar="JOBID")
    _wait_options(sub)

    sub = command("jobs", cmd_jobs, "your jobs, newest first")
    sub.add_argument("--state", help="e.g. RUNNING,PENDING")
    sub.add_argument("--limit", type=int)
    sub.add_argument("--all", action="store_true", help="everyone's jobs (administrators)")
    sub = command("show", cmd_show, "one job")
    sub.add_argument("jobid", metavar="JOBID")
    sub = command("results", cmd_results, "the files in a job's folder")
    sub.add_argument("jobid", metavar="JOBID")
    sub = command("logs", cmd_logs, "a job's output")
    sub.add_argument("jobid", metavar="JOBID")
    sub.add_argument("-f", "--follow", action="store_true", help="follow the live output until the job ends")
    sub.add_argument("--stderr", action="store_true", help="the job's stderr instead of its stdout")
    sub = command("cancel", cmd_cancel, "cancel a job")
    sub.add_argument("jobid", metavar="JOBID")
    return parser


def _wait_options(sub, with_flag=False):
    if with_flag:
        sub.add_argument("--wait", action="store_true",
                         help="wait until the job has ended; exit 0 only if it COMPLETED")
    sub.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default 2)")
    sub.add_argument("--timeout", type=float, help="give up waiting after this many seconds")


if __name__ == "__main__":
    raise SystemExit(main())
