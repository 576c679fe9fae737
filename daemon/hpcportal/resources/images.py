"""/api/v2/apptainer/images and /api/v2/apptainer/scan: thin HTTP over catalog.images."""

import collections
import threading

from ..errors import NotFound, PermissionDenied
from .base import MAX_LIMIT, answer_encoded, bool_param, encode_cacheable, int_param
from .scan import ScanResource

MAX_AGE = 300           # the dashboard caches the list for 5 minutes
CACHED_ANSWERS = 64


class _Answers:
    """Serialized list answers by (index generation, query): a repeated query
    costs one generation lookup, not a JSON dump of the whole catalog."""

    def __init__(self, size=CACHED_ANSWERS):
        self._size = size
        self._items = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def _answer(req, resp, etag, payload):
    answer_encoded(req, resp, etag, payload, max_age=MAX_AGE)


def _include_invalid(req):
    wanted = bool_param(req, "include_invalid", False)
    if wanted and not req.context.user.admin:
        raise PermissionDenied("Only administrators may list invalid images.", code="admin_only")
    return wanted


def _public(image):
    return {k: v for k, v in image.items() if k != "help"}


class ImagesResource:
    def __init__(self, catalog):
        self._catalog = catalog
        self._answers = _Answers()

    def on_get(self, req, resp):
        include_invalid = _include_invalid(req)
        # No limit by default: the dashboard predates paging and caches the whole list.
        limit = int_param(req, "limit", None, 1, MAX_LIMIT)
        offset = int_param(req, "offset", 0, 0)
        filters = {name: (req.get_param(name) or "").strip() or None
                   for name in ("partition", "type", "app", "q")}
        generation = self._catalog.generation()
        key = (generation, include_invalid, limit, offset, tuple(sorted(filters.items())))
        cached = self._answers.get(key)
        if cached is None:
            _, found = self._catalog.search(partition=filters["partition"],
                                            image_type=filters["type"], app=filters["app"],
                                            q=filters["q"], include_invalid=include_invalid)
            page = found[offset:] if limit is None else found[offset:offset + limit]
            body = {"images": [_public(i) for i in page],
                    "total": len(found)}
            cached = encode_cacheable(body)
            self._answers.put(key, cached)
        _answer(req, resp, *cached)

    def on_get_item(self, req, resp, image_id):
        image = self._catalog.get(image_id, include_invalid=req.context.user.admin)
        if image is None:
            raise NotFound(f"There is no image with id {image_id!r}.", code="image_not_found")
        _answer(req, resp, *encode_cacheable(image))


def add_routes(app, *, catalog, indexer, rate_limits):
    app.add_route("/api/v2/apptainer/images", ImagesResource(catalog))
    app.add_route("/api/v2/apptainer/images/{image_id}", ImagesResource(catalog), suffix="item")
    app.add_route("/api/v2/apptainer/scan", ScanResource(indexer, catalog.kind, rate_limits))
