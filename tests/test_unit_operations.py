"""Operations endpoints, browser headers and the API document, in process.

That the API document describes exactly the routes: tests/test_app.py (unit too)."""

import pytest

from support.inprocess import inprocess

pytestmark = pytest.mark.unit

DASHBOARD = "https://dashboard.example.org"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


@pytest.fixture(scope="module")
def portal():
    with inprocess({"security": {"cors_origins": [DASHBOARD]}}) as portal:
        yield portal


def test_healthz_is_anonymous_and_small(portal):
    answer = portal.get("/healthz")
    assert answer.status_code == 200 and answer.json == {"status": "ok"}
    assert len(answer.headers["X-Request-ID"]) == 16


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not.a.token"}, None],
                         ids=["anonymous", "stale token", "user token"])
def test_readyz_tells_others_which_check_fails_but_not_why(portal, headers):
    answer = portal.get("/readyz", user="alice" if headers is None else None, headers=headers)
    # Nothing was started in process, so some services say they are not running.
    assert answer.status_code == 503 and answer.json["ready"] is False
    checks = answer.json["checks"]
    assert checks["database"] == {"ok": True}
    # Which Slurm backend is in use is no secret; why (hosts, settings) is.
    assert checks.pop("slurm") == {"ok": True, "backend": "cli"}
    assert all(set(check) == {"ok"} for check in checks.values())


def test_readyz_gives_an_administrator_the_reasons(portal):
    checks = portal.get("/readyz", user="alice", admin=True).json["checks"]
    assert checks["database"] == {"ok": True, "detail": "reachable"}
    assert checks.pop("slurm") == {"ok": True, "backend": "cli",
                                   "detail": "cli: slurm.backend is auto; slurm.rest_url is not set"}
    assert all(set(check) == {"ok", "detail"} for check in checks.values())


def test_metrics_count_requests_by_route_template_and_status(portal):
    portal.get("/api/v2/me", user="alice")
    portal.get("/api/v2/templates/official.nothing", user="alice")
    text = portal.get("/metrics").text
    assert 'hpcportal_http_requests_total{method="GET",route="/api/v2/me",status="200"}' in text
    # The route's template, not the id a client chose: one series however many ids.
    assert 'route="/api/v2/templates/{template_id}",status="404"' in text
    assert "official.nothing" not in text


@pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")  # falcon's test client is strict; a client may not be
@pytest.mark.parametrize("method, path", [("BREW", "/api/v2/me"), ("GET", "/api/v2/made-up-" + "x" * 300),
                                          ("GET", "/no/such/page")])
def test_made_up_methods_and_paths_add_no_metrics_series(portal, method, path):
    portal.request(method, path, user="alice")
    text = portal.get("/metrics").text
    assert "BREW" not in text and "made-up" not in text and "/no/such" not in text


@pytest.mark.parametrize("path, user", [("/healthz", None), ("/api/v2/me", "alice"),
                                        ("/api/v2/nothing", "alice"), ("/api/v2/me", None)])
def test_every_answer_carries_the_security_headers(portal, path, user):
    answer = portal.get(path, user=user)
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers[name] == value


def test_a_preflight_from_the_dashboard_is_answered_without_a_token(portal):
    answer = portal.request("OPTIONS", "/api/slurm/jobs/submit",
                            headers={"Origin": DASHBOARD, "Access-Control-Request-Method": "POST",
                                     "Access-Control-Request-Headers": "authorization, content-type"})
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in answer.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in answer.headers


def test_the_dashboard_may_read_answers_and_their_headers(portal):
    answer = portal.get("/api/v2/me", user="alice", headers={"Origin": DASHBOARD})
    assert answer.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert "X-Request-ID" in answer.headers["Access-Control-Expose-Headers"]
    assert answer.headers["Vary"] == "Origin"


@pytest.mark.parametrize("origin", ["https://evil.example.org", "http://dashboard.example.org",
                                    "https://dashboard.example.org.evil.org", "null"])
def test_other_origins_get_no_cors_headers(portal, origin):
    answer = portal.get("/api/v2/me", user="alice", headers={"Origin": origin})
    assert answer.status_code == 200
    assert "Access-Control-Allow-Origin" not in answer.headers
    preflight = portal.request("OPTIONS", "/api/v2/me",
                               headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


@pytest.mark.parametrize("path", ["/api/slurm/jobs/submit", "/api/v2/files/upload/init",
                                  "/api/v2/templates/{template_id}/render", "/api/v2/me"])
def test_the_api_document_names_its_error_answers(portal, path):
    operation = next(iter(op for method, op in portal.get("/api/openapi.json").json["paths"][path].items()
                          if method in HTTP_METHODS))
    assert "401" in operation.get("responses", {}) or "default" in operation.get("responses", {})
