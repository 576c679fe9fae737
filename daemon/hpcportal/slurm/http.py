"""One keep-alive connection pool to slurmrestd, over TCP or a unix socket.

slurmrestd listens on ``host:port`` or on ``unix:/path``; a unix socket that only
the daemon's user may open keeps other local users away from it without TLS.

Built on the standard library's ``http.client`` rather than a general client:
a request is sent by ``send`` and its answer read by ``Exchange.receive``, so a
caller can do work that does not need the answer while Slurm works on it (a
submission writes its job folder's records meanwhile). Nothing is ever retried:
a submit sent twice could make a second job.
"""

import http.client
import select
import socket
import ssl
import threading
import urllib.parse


UNIX_PREFIX = "unix:"


class Unreachable(Exception):
    """No connection could be made: nothing was sent."""


class NoAnswer(Exception):
    """The request may have been sent, but no complete answer came back."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path, connect_timeout):
        # The Host header names no machine: "localhost", as curl --unix-socket sends.
        super().__init__("localhost", timeout=connect_timeout)
        self._socket_path = socket_path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _dropped(connection):
    """An idle keep-alive connection the server has closed (or that holds stray bytes)
    must not carry the next request: its end would be read as the answer."""
    if connection.sock is None:
        return False
    # poll(), not select(): a head holding many event streams gives sockets numbers past 1024.
    poller = select.poll()
    try:
        poller.register(connection.sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class Exchange:
    """One request on its way; ``receive()`` waits for the answer: ``(status, body)``."""

    def __init__(self, pool, connection, read_timeout):
        self._pool = pool
        self._connection = connection
        self._read_timeout = read_timeout

    def receive(self):
        connection, self._connection = self._connection, None
        if connection is None:
            raise RuntimeError("the answer of this exchange was read already")
        try:
            connection.sock.settimeout(self._read_timeout)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise NoAnswer(f"{type(error).__name__}: {error}") from None
        if response.will_close:
            connection.close()
        else:
            self._pool._put(connection)
        return response.status, body


class ConnectionPool:
    """Up to ``size`` idle keep-alive connections to one slurmrestd (more may be open
    while many calls are in flight; the extra ones are closed after use)."""

    def __init__(self, url, *, size, connect_timeout, read_timeout):
        self.url = url
        self._size = size
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle = []
        self._lock = threading.Lock()
        self.connections_opened = 0
        if url.startswith(UNIX_PREFIX):
            path = url[len(UNIX_PREFIX):]
            self._new = lambda: _UnixConnection(path, connect_timeout)
        else:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"slurmrestd's address must be http(s)://host:port or unix:/path, not {url!r}")
            host, port = parts.hostname, parts.port
            if parts.scheme == "https":
                context = ssl.create_default_context()
                self._new = lambda: http.client.HTTPSConnection(host, port, timeout=connect_timeout,
                                                                context=context)
            else:
                self._new = lambda: http.client.HTTPConnection(host, port, timeout=connect_timeout)

    def send(self, method, path, body=None, headers=None, read_timeout=None):
        """Sends the request; the ``Exchange`` that reads its answer. Raises
        ``Unreachable`` when no connection could be opened, ``NoAnswer`` when the
        connection broke while sending."""
        connection = self._take()
        try:
            if connection.sock is None:
                connection.connect()
                self.connections_opened += 1
        except OSError as error:
            connection.close()
            raise Unreachable(f"{type(error).__name__}: {error}") from None
        try:
            connection.request(method, path, body=body, headers=headers or {})
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise NoAnswer(f"{type(error).__name__}: {error}") from None
        return Exchange(self, connection, read_timeout or self._read_timeout)

    def request(self, method, path, body=None, headers=None, read_timeout=None):
        """``(status, body)`` of one request."""
        return self.send(method, path, body, headers, read_timeout).receive()

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _take(self):
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._new()
            if not _dropped(connection):
                return connection
            connection.close()

    def _put(self, connection):
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(connection)
                return
        connection.close()
