"""Job submission and monitoring (domain code: no HTTP here).

``build(portal)`` makes the ``JobService`` registered as ``portal.areas["jobs"]``
(with ``.output``, the output reader, and ``.results``, the files in its folder)
and adds the ``JobMonitor`` service.
It uses the image catalog, the template catalog and the uploads when those
areas are built, and works without them.
"""

from ..slurm import Slurm, SlurmRunner
from .folder import JobFolders
from .metrics import JobMetrics
from .monitor import JobMonitor
from .output import JobOutput
from .results import JobResults
from .service import JobService

__all__ = ["build", "JobService"]


def build(portal):
    config = portal.config
    slurm_config = config.slurm
    metrics = JobMetrics(portal.registry)
    runner = SlurmRunner(slurm_config.bin_dir, slurm_config.conf, slurm_config.command_timeout,
                         observe=metrics.observe)
    slurm = Slurm(runner, squeue_interval=slurm_config.squeue_interval,
                  partition_cache=slurm_config.partition_cache)
    metrics.squeue_age.set_function(lambda: -1 if slurm.snapshot_age() is None else slurm.snapshot_age())
    service = JobService(config, portal.database, slurm, JobFolders(config.paths.uploads),
                         images=portal.area("images"), templates=portal.area("templates"),
                         uploads=portal.area("uploads"), metrics=metrics)
    service.output = JobOutput(service, max_slice=slurm_config.max_output_slice,
                               # Streams hold worker threads: one is always left for other requests.
                               max_streams=max(0, min(slurm_config.max_streams, config.server.threads - 1)),
                               max_streams_per_user=slurm_config.max_streams_per_user,
                               max_duration=slurm_config.stream_max_duration,
                               heartbeat=slurm_config.stream_heartbeat, stopping=portal.stopping,
                               metrics=metrics)
    service.results = JobResults(service)
    # A pass runs squeue and sacct, each allowed the command timeout.
    service.monitor = JobMonitor(service, portal.database, interval=slurm_config.poll_interval,
                                 margin=2 * slurm_config.command_timeout + 10)
    portal.services.append(service.monitor)
    portal.areas["jobs"] = service
    return service
