"""Helpers every resource uses: JSON bodies, admin checks, paging, ETags."""

import hashlib
import json

from ..errors import PayloadTooLarge, PermissionDenied, UnsupportedMediaType, ValidationError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_INTEGER = 2**63 - 1
# Deeper than any body of ours (template values nest a few levels): more only
# costs the code that walks it, which may recurse.
MAX_JSON_DEPTH = 32


def read_json(req, max_size=None, required=True):
    """The request's JSON object; 400/413/415 with a clear message otherwise."""
    limit = max_size or req.context.max_json_body
    if req.content_length is not None and req.content_length > limit:
        raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    raw = req.bounded_stream.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    if not raw.strip():
        if required:
            raise ValidationError("The request needs a JSON object as its body.", code="missing_body")
        return {}
    content_type = (req.content_type or "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"Expected Content-Type application/json, got {content_type}.")
    try:
        body = json.loads(raw, parse_int=_json_int, parse_float=_json_float,
                          parse_constant=_json_constant)
    except UnicodeDecodeError:
        raise ValidationError("The request body is not valid UTF-8.", code="malformed_json") from None
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"The request body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
            code="malformed_json") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(body, dict):
        raise ValidationError("The request body must be a JSON object.", code="malformed_json")
    if _depth(body) > MAX_JSON_DEPTH:
        raise _too_deep()
    return body


def _json_int(text):
    # Beyond a 64-bit integer no column, size or offset can take it; and Python
    # refuses to convert integers of more than 4300 digits at all.
    if len(text.lstrip("-")) > 19 or abs(int(text)) > MAX_INTEGER:
        raise ValidationError(
            f"The request body holds an integer of {len(text.lstrip('-'))} digits; integers must "
            f"lie between -{MAX_INTEGER} and {MAX_INTEGER}.", code="malformed_json")
    return int(text)


def _json_float(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValidationError("The request body holds a number too large for a double.",
                              code="malformed_json")
    return value


def _json_constant(name):
    raise ValidationError(f"The request body holds {name}, which is not JSON.", code="malformed_json")


def _too_deep():
    return ValidationError(f"The request body nests arrays and objects deeper than "
                           f"{MAX_JSON_DEPTH} levels.", code="malformed_json")


def _depth(value):
    """How deeply arrays and objects nest in ``value``; without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, level + 1) for child in children)
    return deepest


def require_admin(req):
    user = req.context.user
    if user is None or not user.admin:
        raise PermissionDenied("This action is reserved to administrators.", code="admin_only")
    return user


def int_param(req, name, default=None, minimum=None, maximum=None):
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"Query parameter '{name}' must be an integer.",
                              errors={name: "must be an integer"}) from None
    # Beyond a 64-bit integer no database column, file offset or seek can take it.
    minimum = -MAX_INTEGER if minimum is None else max(minimum, -MAX_INTEGER)
    maximum = MAX_INTEGER if maximum is None else min(maximum, MAX_INTEGER)
    if minimum is not None and value < minimum:
        raise ValidationError(f"Query parameter '{name}' must be at least {minimum}.",
                              errors={name: f"must be at least {minimum}"})
    if maximum is not None and value > maximum:
        raise ValidationError(f"Query parameter '{name}' must be at most {maximum}.",
                              errors={name: f"must be at most {maximum}"})
    return value


def bool_param(req, name, default=False):
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ValidationError(f"Query parameter '{name}' must be true or false.",
                          errors={name: "must be true or false"})


def paging(req):
    """(limit, offset) from the query string."""
    return (int_param(req, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
            int_param(req, "offset", 0, 0))


def encode_cacheable(body):
    """(strong ETag, JSON bytes) of an answer, for answers cached between requests."""
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return '"' + hashlib.sha256(payload).hexdigest()[:32] + '"', payload


def answer_encoded(req, resp, etag, payload, max_age=300):
    """Answer an encoded body with its ETag; 304 when the client has it already."""
    resp.set_header("ETag", etag)
    resp.set_header("Cache-Control", f"private, max-age={max_age}")
    resp.set_header("Vary", "Authorization")
    candidates = [t.strip() for t in (req.get_header("If-None-Match") or "").split(",")]
    if etag in candidates or "*" in candidates:
        resp.status = 304
        return
    resp.data = payload
    resp.content_type = "application/json"


def answer_cacheable(req, resp, body, max_age=300):
    """Answer ``body`` with a strong ETag; 304 when the client has it already."""
    answer_encoded(req, resp, *encode_cacheable(body), max_age=max_age)
