"""One job, described once: what a dashboard submit or a template render asks of Slurm.

A ``JobSpec`` holds checked values only (``slurm.values`` parsed them; the user's
own ``#SBATCH`` lines were read by ``slurm.directives``). ``slurm.script`` writes
it as a batch script; nothing downstream parses script text again.
"""

from dataclasses import dataclass, field, replace

from .directives import COVERS

# Field -> sbatch option, in the order the batch script lists them.
_RESOURCES = (("name", "job-name"), ("partition", "partition"), ("nodes", "nodes"),
              ("tasks_per_node", "ntasks-per-node"), ("cpus_per_task", "cpus-per-task"), ("memory", "mem"),
              ("time", "time"), ("account", "account"), ("qos", "qos"), ("dependency", "dependency"),
              ("array", "array"))
_PORTAL = (("output", "output"), ("error", "error"), ("workdir", "chdir"), ("comment", "comment"),
           ("export", "export"))


@dataclass(frozen=True)
class JobSpec:
    """``script``: the user's (or template's) script, saved byte for byte at ``script_path``
    and run by its own interpreter; with ``image``, inside ``apptainer exec``."""

    script: str
    script_path: str
    name: str | None = None
    partition: str | None = None
    nodes: int | str | None = None
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    memory: str | None = None         # as --mem takes it: 512M, 16G
    time: str | None = None           # as --time takes it: 01:00:00, 2-00:00:00
    account: str | None = None
    qos: str | None = None
    gpus: int | None = None           # written as --gres=gpu:N
    gres: str | None = None
    dependency: str | None = None     # as --dependency takes it: afterok:123:124, singleton
    array: str | None = None          # as --array takes it: 0-9, 1,3,5-7, 0-99%4
    # The user's own #SBATCH options (allow-listed, checked) that the fields above do not speak for.
    options: tuple = ()
    environment: dict = field(default_factory=dict)
    # The portal's own options.
    output: str | None = None
    error: str | None = None
    workdir: str | None = None
    comment: str | None = None
    export: str | None = None
    # The container, when the job runs in one.
    image: str | None = None
    apptainer: str = "apptainer"
    exec_options: tuple = ()
    binds: tuple = ()
    app: str | None = None
    container_env: dict = field(default_factory=dict)

    def resource_directives(self):
        """``[(option, value)]`` of the job's own resources."""
        out = [(option, getattr(self, name)) for name, option in _RESOURCES]
        out.append(("gres", f"gpu:{self.gpus}" if self.gpus else self.gres))
        return [(option, value) for option, value in out if value is not None]

    def directives(self):
        """Every ``#SBATCH`` option: resources, the user's own options, then the portal's."""
        portal = [(option, getattr(self, name)) for name, option in _PORTAL]
        return [*self.resource_directives(), *self.options,
                *((option, value) for option, value in portal if value is not None)]

    def with_script_options(self, script):
        """This job with the user's ``#SBATCH`` options (``{option: Directive}``) where its own
        fields are silent, as sbatch's command line overrides a script's directives."""
        covered = set()
        for option, _value in self.resource_directives():
            covered.update(COVERS.get(option, (option,)))
        return replace(self, options=tuple((d.option, d.value) for d in script.values()
                                           if d.option not in covered))
