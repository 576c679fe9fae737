"""The jobs area's metrics, on the app's own registry."""

from prometheus_client import Counter, Gauge, Histogram


class JobMetrics:
    def __init__(self, registry):
        self.submissions = Counter("hpcportal_job_submissions", "Job submissions by outcome (ok, refused, failed)",
                                   ["outcome"], registry=registry)
        self.slurm_calls = Counter("hpcportal_slurm_calls", "Slurm commands run, by command and outcome",
                                   ["command", "outcome"], registry=registry)
        self.slurm_latency = Histogram("hpcportal_slurm_call_duration_seconds", "Slurm command latency",
                                       ["command"], registry=registry,
                                       buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.rest_calls = Counter("hpcportal_slurm_rest_calls", "slurmrestd calls, by call and outcome",
                                  ["call", "outcome"], registry=registry)
        self.rest_latency = Histogram("hpcportal_slurm_rest_call_duration_seconds", "slurmrestd call latency",
                                      ["call"], registry=registry,
                                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.squeue_age = Gauge("hpcportal_squeue_cache_age_seconds",
                                "Age of the shared squeue snapshot (-1 before the first)", registry=registry)
        self.streams = Gauge("hpcportal_job_output_streams", "Live output streams open", registry=registry)

    def observe_rest(self, call, seconds, outcome):
        self.rest_calls.labels(call, outcome).inc()
        self.rest_latency.labels(call).observe(seconds)

    def observe(self, command, seconds, outcome):
        self.slurm_calls.labels(command, outcome).inc()
        self.slurm_latency.labels(command).observe(seconds)
