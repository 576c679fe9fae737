"""The portal's parts, built once by ``build_portal(config)`` in dependency order.

This is the one place that knows every part. Each part is given what it needs
in its constructor and registers itself nowhere; ``build_portal`` reads from
top to bottom in the order the parts depend on each other: database, users,
audit, limits, metrics, catalog indexer, image catalog, uploads, template
catalog, jobs, and last the background services. ``app.create_app`` puts HTTP
in front of a ``Portal``; ``hpcportald scan`` uses one without HTTP.
"""

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import peewee
from prometheus_client import CollectorRegistry

from . import db as dbmod
from .audit import AuditTrail
from .auth import Authenticator, TokenVerifier, UserDirectory
from .catalog.favourites import Favourites
from .catalog.images import ImageCatalog
from .catalog.indexer import Indexer
from .catalog.my_templates import MyTemplates
from .catalog.proposals import Proposals
from .catalog.template_catalog import TemplateCatalog, TemplateKind
from .catalog.template_files import UserTemplateFiles
from .config import Config
from .errors import ConfigError
from .jobs.as_template import JobTemplates
from .jobs.backends import BackendChoice
from .jobs.dependencies import JobGraph
from .jobs.usage import UsageReport, UsageSampler
from .slurm.accounting import Accounting
from .jobs.folder import JobFolders
from .jobs.metrics import JobMetrics
from .jobs.monitor import JobMonitor
from .jobs.output import JobOutput
from .jobs.results import JobResults
from .jobs.service import JobService
from .notifications import Notifications, build_notifications
from .ratelimit import RateLimits
from .security import slurm_key_in_use
from .slurm import SlurmRunner
from .slurm.client import CommandBackend
from .slurm.rest import SlurmRest, TokenSigner
from .slurm.restbackend import RestBackend
from .uploads.acl import PosixAcls
from .uploads.classify import Classifier
from .uploads.janitor import UploadJanitor
from .uploads.metrics import UploadMetrics
from .uploads.reservations import Reservations
from .uploads.service import Uploads
from .uploads.sharing import Sharing
from .uploads.storage import Storage

log = logging.getLogger("hpcportal")


@dataclass
class Portal:
    """Everything a request or a background service may need, built once per app."""

    config: Config
    database: peewee.Database
    registry: CollectorRegistry
    authenticator: Authenticator
    audit: AuditTrail
    # Per-user limits on expensive calls: ``rate_limits.check(user, "submit")``.
    rate_limits: RateLimits
    indexer: Indexer
    images: ImageCatalog
    uploads: Uploads
    templates: TemplateCatalog
    # Users' own templates written through the API.
    my_templates: MyTemplates
    # Jobs saved as templates.
    job_templates: JobTemplates
    # Users' templates proposed for community/.
    proposals: Proposals
    jobs: JobService
    job_output: JobOutput
    job_files: JobResults
    job_graph: JobGraph
    notifications: Notifications
    job_usage: UsageReport
    # Started in this order and stopped in the reverse one.
    services: tuple
    # Set when the daemon stops: live output streams end at once.
    stopping: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.time

    def start_services(self):
        for service in self.services:
            service.start()

    def stop_services(self):
        self.stopping.set()
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception:  # a failing stop must not keep the others running
                log.exception("stopping %s failed", type(service).__name__)


def build_portal(config, clock=time.time):
    """Every part of the portal for ``config``; nothing is started."""
    database = dbmod.open_database(config)
    directory = UserDirectory(config.users.min_uid, config.users.deny, max_uid=config.users.max_uid)
    authenticator = Authenticator(TokenVerifier(config, clock=clock), directory)
    audit = AuditTrail(database)
    rate_limits = RateLimits(config.security.rate_limits)
    registry = CollectorRegistry(auto_describe=True)
    stopping = threading.Event()

    indexer = Indexer(config.catalog, registry, database=database)
    images = ImageCatalog(database, config.paths.images, config.catalog.image_partitions)
    indexer.register(images.kind)
    notifications = build_notifications(config.notifications, database, holder=_head_name(config))
    uploads = _uploads(config, database, registry, clock, directory, notifications)
    template_kind = TemplateKind(database, os.path.normpath(config.paths.templates))
    indexer.register(template_kind)
    favourites = Favourites(database)
    templates = TemplateCatalog(database, template_kind, images=images, uploads=uploads,
                                favourites=favourites)
    my_templates = MyTemplates(templates, indexer, UserTemplateFiles(config.paths.templates), favourites)
    proposals = Proposals(templates, indexer, os.path.normpath(config.paths.templates),
                          notify=_proposal_notice(notifications.events))
    jobs, job_metrics = _jobs(config, database, registry, images=images, templates=templates,
                              uploads=uploads)
    backends = jobs.backends
    job_templates = JobTemplates(jobs, templates, my_templates)
    job_output = JobOutput(
        jobs, max_slice=config.slurm.max_output_slice,
        # Streams hold worker threads: one is always left for other requests.
        max_streams=max(0, min(config.slurm.max_streams, config.server.threads - 1)),
        max_streams_per_user=config.slurm.max_streams_per_user,
        max_duration=config.slurm.stream_max_duration, heartbeat=config.slurm.stream_heartbeat,
        stopping=stopping, metrics=job_metrics)
    job_files = JobResults(jobs)
    job_graph = JobGraph(jobs)
    # Accounting is read with Slurm's commands (sacct, sstat) whichever backend submits.
    accounting = Accounting(SlurmRunner(config.slurm.bin_dir, config.slurm.conf, config.slurm.command_timeout))
    # slurmrestd 22.05 has no step statistics: only a head with Slurm's commands samples.
    sampling = os.access(os.path.join(config.slurm.bin_dir, "sstat"), os.X_OK)
    job_usage = UsageReport(jobs, accounting, sampling=sampling)

    janitor = UploadJanitor(uploads, database, config.uploads.cleanup_interval)
    # A pass runs squeue and sacct, each allowed the command timeout.
    monitor = JobMonitor(jobs, database, interval=config.slurm.poll_interval,
                         margin=2 * config.slurm.command_timeout + 10,
                         observers=(notifications.jobs.observe,))
    # The audit trail first, so stopped last: it stores the records of the last requests.
    # The backend is chosen before the monitor's first pass asks Slurm.
    services = (audit, indexer, janitor, backends, monitor, *notifications.services)
    if sampling:
        services += (UsageSampler(backends, accounting, database, interval=config.jobs.usage_interval,
                                  max_jobs=config.jobs.usage_max_jobs, retention=config.jobs.usage_retention,
                                  margin=2 * config.slurm.command_timeout + 10),)

    return Portal(config=config, database=database, registry=registry, authenticator=authenticator,
                  audit=audit, rate_limits=rate_limits, indexer=indexer, images=images,
                  uploads=uploads, templates=templates, my_templates=my_templates,
                  job_templates=job_templates, proposals=proposals, jobs=jobs, job_output=job_output,
                  job_files=job_files, job_graph=job_graph, job_usage=job_usage, notifications=notifications,
                  services=services, stopping=stopping, clock=clock)


def _proposal_notice(events):
    """How a proposer is told of the review: a ``template.proposal`` notification."""
    def notify(user, key, title, message, data):
        events.record(user, "template.proposal", key=key, title=title, message=message, data=data)
    return notify


def _head_name(config):
    """This daemon among the heads: host, port and process (a restarted head is another holder)."""
    return f"{socket.gethostname()}:{config.server.port}/{os.getpid()}"


def _uploads(config, database, registry, clock, directory, notifications):
    server = config.server
    # Names this daemon's socket: leases held under it by another process are a dead predecessor's.
    listener = f"{socket.gethostname()}/{server.host}:{server.port}" if server.port else None
    storage = Storage(config.paths.uploads)
    reservations = Reservations(config.uploads, database, storage.free_bytes,
                                lock_timeout=config.database.busy_timeout)
    # Recipients are checked against the same user policy as tokens.
    sharing = Sharing(database, storage, PosixAcls(), directory.lookup, clock=clock,
                      lock_timeout=config.database.busy_timeout)
    events = notifications.upload_events(quota=config.uploads.user_quota, used_bytes=reservations.used_bytes)
    return Uploads(config.uploads, database, storage, Classifier(), UploadMetrics(registry),
                   reservations, sharing, clock=clock, listener=listener, observers=(events.observe,))


def _jobs(config, database, registry, *, images, templates, uploads):
    settings = config.slurm
    metrics = JobMetrics(registry)
    runner = SlurmRunner(settings.bin_dir, settings.conf, settings.command_timeout,
                         observe=metrics.observe)
    backends = _slurm_backends(config, runner, metrics)
    metrics.squeue_age.set_function(
        lambda: -1 if backends.current().snapshot_age() is None else backends.current().snapshot_age())
    service = JobService(config, database, backends, JobFolders(config.paths.uploads),
                         images=images, templates=templates, uploads=uploads, metrics=metrics)
    return service, metrics


def _slurm_backends(config, runner, metrics):
    """The commands, slurmrestd when ``slurm.backend`` may use it, and the choice between them."""
    settings = config.slurm
    caches = {"squeue_interval": settings.squeue_interval, "partition_cache": settings.partition_cache}
    commands = CommandBackend(runner, **caches)

    def choice(mode, rest=None, reason=""):
        return BackendChoice(mode, commands, rest, reason=reason, interval=settings.poll_interval,
                             margin=settings.command_timeout + 10)

    if settings.backend == "cli":
        return choice("cli", reason="slurm.backend is cli")
    if not settings.rest_url:
        return choice("cli", reason="slurm.backend is auto; slurm.rest_url is not set")
    if not slurm_key_in_use(config):
        return choice("cli", reason="slurm.backend is auto; the file slurm.jwt_key_file names does not exist")
    try:
        signer = TokenSigner.from_file(settings.jwt_key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"slurm.jwt_key_file: cannot read {settings.jwt_key_file}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    client = SlurmRest(settings.rest_url, signer, timeout=settings.command_timeout,
                       pool_size=max(4, config.server.threads), observe=metrics.observe_rest)
    rest = RestBackend(client, accounting=commands, **caches)
    return choice(settings.backend, rest, reason=f"slurm.backend is {settings.backend}; not checked yet")
