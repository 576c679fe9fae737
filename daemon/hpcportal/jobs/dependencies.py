"""The graph of a job's dependencies: the jobs of its owner connected to it, for drawing.

Edges come from each job's dependency (as submitted for the portal's jobs, as
squeue shows it for the others): ``from`` is the job waited for, ``to`` the job
waiting. The graph holds every job reachable from the asked one along edges in
either direction (its ancestors, its descendants and theirs), among the jobs of
its owner; a job named by a dependency that Slurm has forgotten is a node with
no name or state.
"""

from .reasons import dependency_edges


class JobGraph:
    def __init__(self, service):
        self._service = service

    def graph(self, user, job_id):
        row = self._service.row_for(user, job_id)
        jobs, _note = self._service.jobs_of(row.user)
        return connected(jobs, row.slurm_job_id)


def connected(jobs, start):
    """``{"nodes", "edges"}`` of the jobs (API answers) connected to the job ``start``."""
    by_id = {job["jobId"]: job for job in jobs}
    # An array task named 123_4 is the job that carries array 123's index 4.
    tasks = {f"{job['arrayJobId']}_{job['arrayTaskId']}": job["jobId"] for job in jobs
             if job.get("arrayJobId") and job.get("arrayTaskId") is not None}
    edges = []
    for job in jobs:
        for kind, awaited in dependency_edges(job.get("dependency")):
            edges.append({"from": tasks.get(awaited, awaited), "to": job["jobId"], "type": kind})
    neighbours = {}
    for edge in edges:
        neighbours.setdefault(edge["from"], set()).add(edge["to"])
        neighbours.setdefault(edge["to"], set()).add(edge["from"])
    seen, todo = {start}, [start]
    while todo:
        for other in neighbours.get(todo.pop(), ()):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    nodes = []
    for job_id in sorted(seen, key=lambda i: (len(i), i)):
        job = by_id.get(job_id, {})
        nodes.append({"jobId": job_id, "name": job.get("name"), "state": job.get("state")})
    return {"nodes": nodes, "edges": [e for e in edges if e["from"] in seen and e["to"] in seen]}
