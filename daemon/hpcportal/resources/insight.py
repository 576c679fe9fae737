"""HTTP resources of job insight: a job's dependency graph."""


class DependenciesResource:
    def __init__(self, graph):
        self._graph = graph

    def on_get(self, req, resp, job_id):
        resp.media = self._graph.graph(req.context.user, job_id)


def add_routes(app, *, graph):
    app.add_route("/api/slurm/jobs/{job_id}/dependencies", DependenciesResource(graph))
