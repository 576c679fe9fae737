"""Loading YAML that anyone who can write a shared folder may have written:
templates and image sidecars.

``yaml.safe_load`` builds no Python objects beyond plain data, but it still
expands aliases (a few nested ``*name`` references in a small file expand to
billions of nodes) and composes nested collections by recursion (a file of
``[[[[...`` exhausts Python's stack). ``BoundedLoader`` refuses both while it
composes, before anything is built: every refusal is a ``yaml.YAMLError``
with a line and column, so callers report it like any other YAML error.
"""

import yaml

MAX_DEPTH = 64


class Refused(yaml.MarkedYAMLError):
    """YAML that is well-formed but not accepted here."""


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader without aliases and with at most ``MAX_DEPTH`` nested collections."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise Refused(None, None, f"YAML aliases (*{event.anchor}) are not allowed here",
                          event.start_mark)
        if self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            if self._depth >= MAX_DEPTH:
                raise Refused(None, None, f"collections nest deeper than {MAX_DEPTH} levels",
                              self.peek_event().start_mark)
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)


def load(data, max_bytes, loader=BoundedLoader):
    """The document in ``data`` (bytes or str) of at most ``max_bytes``
    bytes; ``yaml.YAMLError`` (``Refused`` for our limits) otherwise."""
    size = len(data.encode("utf-8") if isinstance(data, str) else data)
    if size > max_bytes:
        raise Refused(None, None, f"the file is larger than {max_bytes} bytes", None)
    if isinstance(data, bytes):
        data = data.decode("utf-8")  # UnicodeDecodeError for the caller, as yaml would
    return yaml.load(data, Loader=loader)
