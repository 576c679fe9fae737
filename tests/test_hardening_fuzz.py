"""The API against its own contract: schemathesis fuzzes every operation of the
served ``/api/openapi.json`` of a real daemon, with an administrator's token
and without one.

Checks: never a 5xx (a 503 only with its documented reason: a readiness
problem such as the database or Slurm, which does not happen here), every
status documented for its operation, the answer's content type and body
matching the document, documented answer headers well-formed.

Bounded: ``PORTAL_FUZZ_EXAMPLES`` examples per operation with a token (default
20) and a quarter of that without one, so the whole module stays within a few
minutes on two cores; raise it by hand for a deeper run.
"""

import json
import os
import warnings

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_headers_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from hpcportal.openapi import document
from support.daemon import Daemon, SharedTree, auth_headers

EXAMPLES = int(os.environ.get("PORTAL_FUZZ_EXAMPLES", "20"))
# Derandomized: the suite is reproducible; PORTAL_FUZZ_RANDOM=1 explores new examples.
FUZZ_SETTINGS = dict(deadline=None, database=None,
                     derandomize=os.environ.get("PORTAL_FUZZ_RANDOM") != "1",
                     phases=[Phase.explicit, Phase.generate],
                     suppress_health_check=list(HealthCheck))


def not_a_server_error(ctx, response, case):
    """A 5xx only for 503/507 carrying our error body (a documented backend outage)."""
    if response.status_code >= 500:
        body = response.json() if "json" in response.headers.get("Content-Type", "") else {}
        assert response.status_code in (503, 507) and body.get("error") not in (None, "internal_error"), (
            f"{case.method} {case.formatted_path} answered {response.status_code}: "
            f"{response.text[:500]}")
    return True


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def fuzzed_daemon(users):
    shared = SharedTree()
    daemon = Daemon(shared, config={
        # The fuzzer calls scan and submit far more often than any user: rate
        # limits are tested elsewhere (test_hardening_security.py).
        "security": {"rate_limits": {"submit": 0, "upload_init": 0, "scan": 0}},
        # Generated uploads must not fill the test machine.
        "uploads": {"max_size": "64MiB", "max_active_per_user": 10000,
                    "free_space_reserve": "0"},
    })
    daemon.start()
    yield daemon
    daemon.stop()
    logs = daemon.logs()
    shared.cleanup()
    assert "Traceback" not in logs, logs[max(0, logs.find("Traceback") - 500):][:5000]


# Operations are collected from the package's document (schemathesis' lazy
# fixture loader does not work with pytest 9); the first test checks that the
# daemon serves exactly this document, so the fuzzed contract is the served one.
schema = schemathesis.openapi.from_dict(document())
# tus PATCH bodies are raw bytes like application/octet-stream.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


def test_the_fuzzed_document_is_the_served_one(fuzzed_daemon):
    served = requests.get(fuzzed_daemon.url + "/api/openapi.json", timeout=30).json()
    assert served == json.loads(json.dumps(document()))


# Findings in other areas' fragments, reported to their owners: answers with
# these statuses are let through with a warning (shown in pytest's summary)
# until the fragment documents them; everything else is still checked.
# (method, path) -> (statuses, why): contract gaps tolerated with a warning. None left.
KNOWN_GAPS = {}


def call_and_validate(case, checks, **kwargs):
    answer = case.call(**kwargs)
    statuses, gap = KNOWN_GAPS.get((case.method.upper(), case.path), ((), None))
    if answer.status_code in statuses:
        warnings.warn(f"known contract gap: {gap}")
        return answer
    case.validate_response(answer, checks=checks)
    return answer


@schema.parametrize()
@settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
def test_api_with_a_token_keeps_its_contract(case, fuzzed_daemon):
    # Some generated cases leave the token out on purpose (schemathesis' auth
    # negation): those must answer a documented 401 as well.
    call_and_validate(case, base_url=fuzzed_daemon.url, headers=auth_headers("alice", admin=True),
                      checks=CHECKS, timeout=60)


@schema.parametrize()
@settings(max_examples=max(2, EXAMPLES // 4), **FUZZ_SETTINGS)
def test_api_without_a_token_keeps_its_contract(case, fuzzed_daemon):
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    answer = call_and_validate(case, base_url=fuzzed_daemon.url, checks=CHECKS, timeout=60)
    if case.path.startswith("/api/") and case.path != "/api/openapi.json":
        assert answer.status_code == 401, (case.method, case.formatted_path, answer.text[:300])
