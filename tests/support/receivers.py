"""Real receivers on loopback for notification tests: an SMTP server and a webhook endpoint.

``MailServer`` is aiosmtpd's SMTP server (a real SMTP conversation) keeping
every message it accepts; ``WebhookReceiver`` is an HTTP server keeping every
POST (headers and body). Both are started and stopped by the test.
"""

import email
import email.policy
import http.server
import json
import threading
import time

from aiosmtpd.controller import Controller

from .daemon import free_port


class _Keep:
    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append({"to": list(envelope.rcpt_tos), "subject": message["Subject"],
                                  "body": message.get_content(), "at": time.time()})
        return "250 OK"


class MailServer:
    def __init__(self, port=None):
        self.port = port or free_port()
        self._handler = _Keep()
        self._controller = None

    @property
    def messages(self):
        with self._handler.lock:
            return list(self._handler.messages)

    def start(self):
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self):
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


class WebhookReceiver:
    """Answers every POST with ``status`` and keeps it; a 302 status tests that redirects are not followed."""

    def __init__(self, status=204):
        self.calls = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.calls.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                       "json": json.loads(body)})
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
