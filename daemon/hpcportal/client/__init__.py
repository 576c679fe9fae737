"""hpcportal.client: a Python client of the portal's HTTP API, and the ``hpcportal`` command.

Only ``requests`` and the standard library: it runs on a laptop or a login node
without the daemon's dependencies, and never imports the daemon's own modules.

    from hpcportal.client import Client, ClientError
    portal = Client("https://portal.example.org", token)
    file = portal.upload("mesh.tar.gz")
    job = portal.wait(portal.submit("run.sh", files=[file["file_id"]])["jobId"])
"""

from .api import Client
from .errors import ClientError

__all__ = ["Client", "ClientError"]
