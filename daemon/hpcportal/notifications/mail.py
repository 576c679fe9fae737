"""Sending one notification e-mail through the cluster's mail server (SMTP)."""

import email.message
import email.utils
import smtplib

from ..errors import ConfigError


class DeliveryFailed(Exception):
    """One attempt failed; the text says why (shown to the user)."""


class Mailer:
    def __init__(self, settings, *, timeout=30):
        self._host = settings.smtp_host
        self._port = settings.smtp_port
        self._starttls = settings.smtp_starttls
        self._username = settings.smtp_username
        self._password_file = settings.smtp_password_file
        self._sender = getattr(settings, "from")
        self._timeout = timeout

    @property
    def enabled(self):
        return bool(self._host)

    def _password(self):
        try:
            with open(self._password_file, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise ConfigError(f"notifications.smtp_password_file: cannot read it: {exc.strerror}") from None

    def send(self, address, event):
        """Sends the plain-text e-mail of ``event`` (a NotificationEvent) to ``address``."""
        message = email.message.EmailMessage()
        message["From"] = self._sender
        message["To"] = address
        message["Subject"] = subject(event)
        message["Date"] = email.utils.formatdate(usegmt=True)
        message["Message-ID"] = email.utils.make_msgid(idstring=f"hpcportal-{event.id}")
        message.set_content(body(event))
        try:
            with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
                if self._starttls:
                    smtp.starttls()
                if self._username:
                    smtp.login(self._username, self._password())
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException, ConfigError) as exc:
            raise DeliveryFailed(f"e-mail to {address}: {exc}") from None


def subject(event):
    data = event.data or {}
    if data.get("jobId"):
        return f"[hpcportal] Job {data['jobId']} {data.get('state', '')}: {data.get('name', '')}".strip()
    return f"[hpcportal] {event.title}"


def body(event):
    """A link-free summary: what happened, and the event's fields."""
    data = event.data or {}
    lines = [event.title, "", event.message, ""]
    for key in ("jobId", "name", "state", "exitCode", "reason", "file", "used", "quota", "template"):
        if data.get(key) not in (None, ""):
            lines.append(f"{key}: {data[key]}")
    lines += ["", f"Event {event.type} at {event.created_at.isoformat()}Z.",
              "You receive this because of your notification preferences in the portal."]
    return "\n".join(lines) + "\n"
