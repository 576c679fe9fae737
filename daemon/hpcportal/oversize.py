"""Request bodies over the server's limit: refused by the app, in JSON, with CORS.

waitress refuses a body whose Content-Length reaches ``max_request_body_size``
itself, before the app runs: a plain-text 413 without CORS headers, and the
connection closes while the client is still sending. A browser sees only a
network error, and tus clients retry, sending the whole body again each time.
Here such a request goes to the app at once with an empty body and a mark in
its environ; ``OversizedBodyMiddleware`` answers the daemon's JSON 413 (through
the usual middleware, so with CORS headers). The body's bytes are then read
and dropped as they arrive, never kept, so the connection stays usable and the
client reads the answer once it has sent its body, as browsers do.

Bodies sent in chunked transfer coding have no length to judge early; waitress
still refuses those that grow past the limit (browsers never send them).
"""

import functools

from .errors import PayloadTooLarge

# environ key holding the server's body limit when the request's body was refused.
REFUSED = "hpcportal.body_refused"


def refusing_oversized_bodies(channel_class):
    """A subclass of waitress' ``channel_class`` whose requests with a
    Content-Length at or over the limit reach the app without their body."""

    class Parser(channel_class.parser_class):
        refused = 0          # the refused body's length
        close_after = False  # end the connection after the answer
        _counted = False

        def __init__(self, adj, channel=None):
            super().__init__(adj)
            self._channel = channel

        def parse_header(self, header_plus):
            super().parse_header(header_plus)
            if self.chunked or self.content_length < self.adj.max_request_body_size:
                return
            self.refused = self.content_length
            # An empty body completes the request now, and waitress' own check
            # (of content_length) passes; the app still sees CONTENT_LENGTH as sent.
            self.body_rcv = None
            self.content_length = 0
            if self.expect_continue or self._channel is None:
                # A client waiting for 100 Continue sends no body: nothing to drop.
                self.expect_continue = False
                self.close_after = True

        def received(self, data):
            consumed = super().received(data)
            if self.refused and self.completed and not self.close_after and not self._counted:
                # Bytes of the refused body in this read are dropped here, the
                # rest by the channel as they arrive.
                self._counted = True
                here = min(len(data) - consumed, self.refused)
                self._channel.dropping = self.refused - here
                return consumed + here
            return consumed

    class Task(channel_class.task_class):
        def get_environment(self):
            environ = super().get_environment()
            if self.request.refused:
                environ[REFUSED] = self.channel.adj.max_request_body_size
            return environ

        def execute(self):
            if self.request.close_after:
                self.set_close_on_finish()
            super().execute()

    class Channel(channel_class):
        parser_class = Parser
        task_class = Task
        dropping = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.parser_class = functools.partial(type(self).parser_class, channel=self)

        def received(self, data):
            if self.dropping and data:
                dropped = min(self.dropping, len(data))
                self.dropping -= dropped
                data = data[dropped:]
                if not data:
                    return True
            return super().received(data)

    return Channel


class OversizedBodyMiddleware:
    """The JSON 413 for a request whose body the server refused (see above)."""

    def __init__(self, max_chunk_size):
        self._max_chunk_size = max_chunk_size

    def process_request(self, req, resp):
        limit = req.env.get(REFUSED)
        if limit is None:
            return
        if req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method"):
            return  # a preflight has no body to speak of
        raise PayloadTooLarge(
            f"The request body has {req.content_length} bytes; this server takes bodies of "
            f"less than {limit} bytes. Send uploads in chunks of at most {self._max_chunk_size} "
            "bytes (uploads.max_chunk_size; tus clients: chunkSize).", code="chunk_too_large",
            extra={"max_chunk_size": self._max_chunk_size, "max_body_size": limit - 1})
