"""HTTP resources of job insight: a job's dependency graph, its usage over time and
efficiency, and a user's usage per partition."""

import re

from ..errors import ValidationError
from .base import bool_param, int_param


class DependenciesResource:
    def __init__(self, graph):
        self._graph = graph

    def on_get(self, req, resp, job_id):
        resp.media = self._graph.graph(req.context.user, job_id)


class JobUsageResource:
    def __init__(self, usage):
        self._usage = usage

    def on_get(self, req, resp, job_id):
        resp.media = self._usage.job(req.context.user, job_id)


class MyUsageResource:
    def __init__(self, usage):
        self._usage = usage

    def on_get(self, req, resp):
        days = int_param(req, "days", 30, 1, 3650)
        who = req.get_param("user")
        if who is not None and not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,63}", who):
            raise ValidationError("Query parameter 'user' must be a user name.", errors={"user": "not a user name"})
        resp.media = self._usage.user(req.context.user, days=days, who=who, everyone=bool_param(req, "all"))


def add_routes(app, *, graph, usage):
    app.add_route("/api/slurm/jobs/{job_id}/dependencies", DependenciesResource(graph))
    app.add_route("/api/slurm/jobs/{job_id}/usage", JobUsageResource(usage))
    app.add_route("/api/v2/me/usage", MyUsageResource(usage))
