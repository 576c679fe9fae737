"""The client's pure parts: how errors are worded, tables, the progress bar, arguments."""

import io

import pytest
import requests

from hpcportal.client.cli import build_parser, main
from hpcportal.client.display import Progress, size, table
from hpcportal.client.errors import from_response

pytestmark = pytest.mark.unit


def _answer(status, body, content_type="application/json"):
    answer = requests.Response()
    answer.status_code = status
    answer._content = body.encode()
    answer.headers["Content-Type"] = content_type
    return answer


def test_errors_say_what_the_portal_said_in_one_line():
    token = from_response(_answer(422, '{"msg": "Signature verification failed", "error": "invalid_token"}'))
    assert token.code == "bad_token" and token.status == 422
    assert str(token) == ("the portal refused the token (Signature verification failed); "
                          "get a new one from the Auth Portal")
    missing = from_response(_answer(401, '{"msg": "Missing Authorization Header"}'))
    assert missing.code == "bad_token"
    fields = from_response(_answer(400, '{"success": false, "error": "invalid_request", "message": '
                                        '"The job request is not valid: memory bad (and 1 more).", '
                                        '"errors": {"memory": "bad", "time": "worse"}}'))
    assert fields.code == "invalid_request" and fields.details == {"memory": "bad", "time": "worse"}
    assert str(fields) == "The job request is not valid: memory bad (and 1 more); time: worse (HTTP 400)"
    proxy = from_response(_answer(502, "<html><body>Bad\n  Gateway</body></html>", "text/html"))
    assert proxy.code == "server_error" and "\n" not in str(proxy) and "(HTTP 502)" in str(proxy)


def test_tables_line_up_korean_names():
    out = io.StringIO()
    table([{"n": "결과 파일.csv", "s": 5}, {"n": "a.txt", "s": None}],
          [("NAME", lambda r: r["n"]), ("SIZE", lambda r: r["s"])], out)
    lines = out.getvalue().splitlines()
    assert lines == ["NAME           SIZE", "결과 파일.csv  5", "a.txt          -"]
    assert size(0) == "0 B" and size(5 * 1024 * 1024) == "5.0 MiB" and size(None) == "-"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_redraws_on_a_terminal_and_prints_steps_elsewhere():
    now = [0.0]
    terminal = _Terminal()
    bar = Progress("data.bin", out=terminal, clock=lambda: now[0])
    for done in (0, 10, 20, 100):
        now[0] += 1
        bar(done, 100)
    bar.close()
    text = terminal.getvalue()
    assert text.count("\r") == 4 and "100% 100 B/100 B" in text and text.endswith("\n")

    log = io.StringIO()
    quiet_steps = Progress("data.bin", out=log, enabled=True, clock=lambda: 1.0)
    for done in range(0, 101, 5):
        quiet_steps(done, 100)
    assert len(log.getvalue().splitlines()) == 11  # 0 %, 10 %, ..., 100 %

    resumed = io.StringIO()
    Progress("data.bin", out=resumed, enabled=True)(40, 100)
    assert resumed.getvalue().startswith("data.bin: resuming, 40 B of 100 B already sent\n")
    off = io.StringIO()
    Progress("data.bin", out=off)(50, 100)  # not a terminal, not asked for
    assert off.getvalue() == ""


def test_arguments(monkeypatch):
    parser = build_parser()
    args = parser.parse_args(["--json", "submit", "run.sh", "--file", "a", "--file", "slot=b",
                              "--param", "x=1=2", "--wait"])
    assert args.json and args.wait and args.file == ["a", "slot=b"] and args.param == ["x=1=2"]
    assert parser.parse_args(["upload", "f", "--chunk-size", "8MiB"]).chunk_size == 8 * 1024 * 1024
    for name in ("PORTAL_URL", "PORTAL_TOKEN", "PORTAL_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    err = io.StringIO()
    assert main(["me"], out=io.StringIO(), err=err) == 2
    assert err.getvalue() == "hpcportal: error: no portal URL: give --url or set PORTAL_URL\n"
    err = io.StringIO()
    assert main(["me", "--url", "ftp://x", "--token", "t"], out=io.StringIO(), err=err) == 2
    assert "must start with http:// or https://" in err.getvalue()
