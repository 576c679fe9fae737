"""One keep-alive connection pool to slurmrestd, over TCP or a unix socket.

slurmrestd listens on ``host:port`` or on ``unix:/path``; a unix socket that only
the daemon's user may open keeps other local users away from it without TLS.
urllib3 speaks TCP only, so the unix form is a pool whose connections open an
``AF_UNIX`` socket instead; everything above the socket (keep-alive, time-outs,
HTTP) is urllib3's.
"""

import socket

import urllib3
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

UNIX_PREFIX = "unix:"


class UnixHTTPConnection(HTTPConnection):
    def __init__(self, host, port=None, *, socket_path, **kwargs):
        super().__init__(host, port, **kwargs)
        self._socket_path = socket_path

    def _new_conn(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._socket_path)
        except TimeoutError as error:
            sock.close()
            raise ConnectTimeoutError(self, f"{self._socket_path} did not accept in time") from error
        except OSError as error:
            sock.close()
            raise NewConnectionError(self, f"cannot connect to {self._socket_path}: {error}") from error
        return sock


class UnixHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = UnixHTTPConnection

    def __init__(self, socket_path, **kwargs):
        # The Host header names no machine: "localhost", as curl --unix-socket sends.
        super().__init__("localhost", **kwargs)
        self.conn_kw["socket_path"] = socket_path


def connection_pool(url, *, pool_size, connect_timeout, read_timeout):
    """A pool for ``http://host:port`` (or https) or ``unix:/path``. No retries: a
    submit retried blindly could make a second job."""
    options = {"maxsize": pool_size, "block": False, "retries": False,
               "timeout": urllib3.Timeout(connect=connect_timeout, read=read_timeout),
               "headers": {"Accept": "application/json"}}
    if url.startswith(UNIX_PREFIX):
        return UnixHTTPConnectionPool(url[len(UNIX_PREFIX):], **options)
    return urllib3.connection_from_url(url, **options)
