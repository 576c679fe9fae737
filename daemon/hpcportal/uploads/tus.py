"""tus 1.0.0 header values: Upload-Metadata, Upload-Checksum, Upload-Expires.

Pure functions; the HTTP side is ``hpcportal.resources.uploads``.
"""

import base64
import binascii
import email.utils
import hashlib

from ..errors import ValidationError

VERSION = "1.0.0"
EXTENSIONS = ("creation", "creation-with-upload", "termination", "checksum", "expiration")
CHECKSUM_ALGORITHMS = ("sha1", "md5", "sha256")
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"


def parse_metadata(header):
    """``key base64value,key2`` -> {"key": "value", "key2": ""}."""
    result = {}
    if not header or not header.strip():
        return result
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        key = parts[0]
        if not key or len(parts) > 2:
            raise ValidationError("Upload-Metadata must be comma-separated 'key base64value' pairs.",
                                  errors={"Upload-Metadata": "malformed"})
        if key in result:
            raise ValidationError(f"Upload-Metadata names {key!r} twice.",
                                  errors={"Upload-Metadata": f"duplicate key {key}"})
        value = ""
        if len(parts) == 2:
            try:
                value = base64.b64decode(parts[1], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise ValidationError(f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text.",
                                      errors={"Upload-Metadata": f"bad value for {key}"}) from None
        result[key] = value
    return result


def encode_metadata(metadata):
    pairs = []
    for key, value in (metadata or {}).items():
        if value == "":
            pairs.append(key)
        else:
            pairs.append(f"{key} {base64.b64encode(value.encode('utf-8')).decode('ascii')}")
    return ",".join(pairs)


def parse_checksum(header):
    """``sha1 <base64 digest>`` -> (hashlib object, expected digest bytes)."""
    parts = (header or "").strip().split(" ")
    if len(parts) != 2:
        raise ValidationError("Upload-Checksum must be '<algorithm> <base64 digest>'.",
                              errors={"Upload-Checksum": "malformed"})
    algorithm, encoded = parts[0].lower(), parts[1]
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ValidationError(
            f"Checksum algorithm {algorithm!r} is not supported; use one of "
            f"{', '.join(CHECKSUM_ALGORITHMS)}.", errors={"Upload-Checksum": "unsupported algorithm"})
    try:
        expected = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValidationError("Upload-Checksum digest is not valid base64.",
                              errors={"Upload-Checksum": "malformed digest"}) from None
    return hashlib.new(algorithm), expected


def http_date(moment):
    """A naive UTC datetime as an RFC 9110 date (the format Upload-Expires uses)."""
    import calendar
    return email.utils.formatdate(calendar.timegm(moment.timetuple()), usegmt=True)
